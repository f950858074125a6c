//! AI judges answering a project's leases at their rate: a credit per judge that refills with time, the
//! HTTP judges' clients (one connection pool each, kept between ticks), and the answers themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::error::{LoopError, LoopResult};
use crate::domain::{JudgeKind, JudgeRole};
use crate::judge::JudgeSettings;
use crate::judge::http::HttpJudge;
use crate::judge::sentiment::SentimentJudge;
use crate::store::Store;
use crate::store::judges::{Judge, list_judges};
use crate::store::leases::{JudgmentInput, lease_next_pair, record_judgment, release_lease};
use crate::store::projects::Project;
use crate::store::users::get_user;

/// The judges' state that outlives a tick.
#[derive(Default)]
pub(super) struct Judges {
    /// Per judge: answers it may still give, and when that was last topped up.
    credit: Mutex<HashMap<String, (f64, Instant)>>,
    pub(super) sentiment: SentimentJudge,
    /// HTTP judges by judge id, each with its own connection pool.
    http: Mutex<HashMap<String, Arc<HttpJudge>>>,
}

/// A judge's credit after `elapsed_seconds` at `rate_per_minute`, capped at a minute's worth (at least
/// one answer), and how many whole answers it allows now: `(answers, credit left)`.
pub(super) fn spend_credit(
    credit: f64,
    elapsed_seconds: f64,
    rate_per_minute: f64,
) -> (usize, f64) {
    let topped = (credit + rate_per_minute * elapsed_seconds / 60.0).min(rate_per_minute.max(1.0));
    let answers = topped.floor().max(0.0);
    (answers as usize, topped - answers)
}

fn settings(judge: &Judge) -> LoopResult<JudgeSettings> {
    serde_json::from_value(judge.settings.clone()).map_err(|source| LoopError::JudgeSettings {
        judge: judge.id.clone(),
        source,
    })
}

impl Judges {
    fn allowance(&self, judge: &Judge, rate: f64) -> usize {
        let mut credits = self.credit.lock().expect("lock");
        let (credit, since) = credits
            .entry(judge.id.clone())
            .or_insert((1.0, Instant::now()));
        let (answers, left) = spend_credit(*credit, since.elapsed().as_secs_f64(), rate);
        *credit = left;
        *since = Instant::now();
        answers
    }

    fn http_judge(&self, judge: &Judge) -> LoopResult<Arc<HttpJudge>> {
        let mut judges = self.http.lock().expect("lock");
        if let Some(j) = judges.get(&judge.id) {
            return Ok(j.clone());
        }
        let Some(http) = settings(judge)?.http else {
            return Err(LoopError::JudgeSettings {
                judge: judge.id.clone(),
                source: serde::de::Error::missing_field("http"),
            });
        };
        let j = Arc::new(HttpJudge::new(http));
        judges.insert(judge.id.clone(), j.clone());
        Ok(j)
    }

    /// Every judge of the project answers as many leases as its credit allows.
    pub(super) async fn answer(&self, store: &Store, project: &Project) -> LoopResult<()> {
        for judge in list_judges(store, &project.id).await? {
            let settings = settings(&judge)?;
            if settings.role == JudgeRole::Evaluate {
                continue;
            }
            let rate = settings.rate_per_minute;
            for _ in 0..self.allowance(&judge, rate) {
                if !self.answer_one(store, project, &judge).await? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// One lease answered by a judge; false when nothing was left to answer.
    async fn answer_one(
        &self,
        store: &Store,
        project: &Project,
        judge: &Judge,
    ) -> LoopResult<bool> {
        let user = get_user(store, &judge.user_id).await?;
        let Some(lease) = lease_next_pair(store, project, &user, &[]).await? else {
            return Ok(false);
        };
        let verdict = match judge.kind {
            JudgeKind::Sentiment => self.sentiment.judge(&lease.left, &lease.right),
            JudgeKind::Http => {
                let http = self.http_judge(judge)?;
                let shown_a_first = rand::random::<bool>();
                let answer = http
                    .judge(
                        &project.guidelines,
                        &lease.prompt,
                        &lease.left,
                        &lease.right,
                        shown_a_first,
                    )
                    .await;
                match answer {
                    Ok(v) => v,
                    Err(source) => {
                        // Give the pair back at once rather than let it wait for the lease to run out.
                        release_lease(store, &lease.lease_id, &user).await?;
                        return Err(LoopError::JudgeCall {
                            judge: judge.id.clone(),
                            source,
                        });
                    }
                }
            }
        };
        let input = JudgmentInput {
            choice: verdict.choice,
            rationale: Some(verdict.rationale),
            seconds: None,
        };
        record_judgment(store, &lease.lease_id, &user, &input, None).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::spend_credit;

    #[test]
    fn credit_refills_with_time_and_is_capped_at_a_minute() {
        // A new judge starts with one answer.
        assert_eq!(spend_credit(1.0, 0.0, 60.0), (1, 0.0));
        // Half a second at 60 a minute is half an answer: nothing yet, the half is kept.
        assert_eq!(spend_credit(0.0, 0.5, 60.0), (0, 0.5));
        assert_eq!(spend_credit(0.5, 0.5, 60.0), (1, 0.0));
        // An hour idle allows at most a minute's worth.
        assert_eq!(spend_credit(0.0, 3600.0, 60.0), (60, 0.0));
        // A slow judge still gets its one answer once the credit is there.
        assert_eq!(spend_credit(0.0, 3600.0, 0.5), (1, 0.0));
        let (n, left) = spend_credit(0.0, 1.0, 90.0);
        assert_eq!(n, 1);
        assert!((left - 0.5).abs() < 1e-12);
    }
}
