//! Import and metadata jobs. A job's state is a pure function of the time since its creation,
//! so it advances whether or not anybody polls.

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Import,
    Metadata,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Queued,
    Processing,
    Completed,
    Failed,
}

#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub id: String,
    pub kind: Kind,
    pub url: String,
    pub created_ms: u64,
    pub finish_ms: u64,
    /// Ends `failed` instead of `completed` (a `/fail` URL).
    pub fails: bool,
    /// Credits an import costs when it completes; for metadata, the format cost multiplier.
    pub cost: i64,
}

/// The error a failed job reports.
pub(crate) const FAILURE: &str = "Unsupported media";

impl Job {
    pub fn phase(&self, now_ms: u64) -> Phase {
        if now_ms >= self.finish_ms {
            return if self.fails {
                Phase::Failed
            } else {
                Phase::Completed
            };
        }
        let elapsed = now_ms.saturating_sub(self.created_ms);
        let total = self.finish_ms.saturating_sub(self.created_ms);
        if elapsed.saturating_mul(3) < total {
            Phase::Queued
        } else {
            Phase::Processing
        }
    }

    /// The `data` object of a status answer at `now_ms`.
    pub fn data(&self, now_ms: u64) -> Value {
        let phase = self.phase(now_ms);
        let noun = match self.kind {
            Kind::Import => "Import",
            Kind::Metadata => "Metadata job",
        };
        let id = &self.id;
        match phase {
            Phase::Queued => {
                json!({"jobId": id, "status": "queued", "message": format!("{noun} queued.")})
            }
            Phase::Processing => {
                json!({"jobId": id, "status": "processing", "message": format!("{noun} processing.")})
            }
            Phase::Failed => json!({
                "jobId": id, "status": "failed", "error": FAILURE, "creditsUsed": 0,
                "message": format!("{noun} failed: {FAILURE}."),
            }),
            Phase::Completed => self.completed_data(),
        }
    }

    fn completed_data(&self) -> Value {
        let id = &self.id;
        match self.kind {
            Kind::Import => json!({
                "jobId": id,
                "status": "completed",
                "mediaUrl": format!("https://media.sim.importly.local/{id}.mp4"),
                "creditsUsed": self.cost,
                "message": "Import completed.",
            }),
            Kind::Metadata => json!({
                "jobId": id,
                "status": "completed",
                "result": metadata_result(&self.url, self.cost),
                "message": "Metadata job completed.",
            }),
        }
    }
}

/// Title, duration and formats of a media URL. Deterministic, so a client's metadata cache can
/// be checked; format costs are the base costs times `multiplier`.
pub(crate) fn metadata_result(url: &str, multiplier: i64) -> Value {
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').find(|s| !s.is_empty()))
        .unwrap_or("media");
    let duration = 60 + url.bytes().map(u64::from).sum::<u64>() % 600;
    let formats: Vec<Value> = [
        ("18", "360p", 360, 1),
        ("22", "720p", 720, 2),
        ("137+140", "1080p", 1080, 4),
    ]
    .iter()
    .map(|&(id, quality, height, base)| {
        json!({
            "formatId": id,
            "selector": format!("bestvideo[height<={height}]+bestaudio/best[height<={height}]"),
            "ext": "mp4",
            "quality": quality,
            "costInCredits": base * multiplier.max(0),
            "description": format!("{quality} MP4 (video and audio)"),
            "height": height,
            "isAudioOnly": false,
            "codec": {"video": "avc1", "audio": "mp4a"},
        })
    })
    .chain(std::iter::once(json!({
        "formatId": "140",
        "selector": "bestaudio[ext=m4a]/bestaudio",
        "ext": "m4a",
        "quality": "audio",
        "costInCredits": multiplier.max(0),
        "description": "Audio only (M4A)",
        "height": null,
        "isAudioOnly": true,
        "codec": {"video": null, "audio": "mp4a"},
    })))
    .collect();
    json!({"title": format!("Sim media {name}"), "duration": duration, "availableFormats": formats})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(fails: bool) -> Job {
        Job {
            id: "j1".into(),
            kind: Kind::Import,
            url: "https://e.com/a.mp4".into(),
            created_ms: 1000,
            finish_ms: 1300,
            fails,
            cost: 3,
        }
    }

    #[test]
    fn phases_follow_elapsed_time() {
        let j = job(false);
        assert_eq!(j.phase(1000), Phase::Queued);
        assert_eq!(j.phase(1099), Phase::Queued);
        assert_eq!(j.phase(1100), Phase::Processing);
        assert_eq!(j.phase(1299), Phase::Processing);
        assert_eq!(j.phase(1300), Phase::Completed);
        assert_eq!(job(true).phase(5000), Phase::Failed);
        assert_eq!(j.data(2000)["creditsUsed"], 3);
    }

    #[test]
    fn metadata_costs_scale() {
        let r = metadata_result("https://e.com/cost-3/v.mp4", 3);
        let costs: Vec<i64> = r["availableFormats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["costInCredits"].as_i64())
            .collect();
        assert_eq!(costs, [3, 6, 12, 3]);
        assert_eq!(r["title"], "Sim media v.mp4");
    }
}
