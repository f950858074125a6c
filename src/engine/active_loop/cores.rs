//! Who gets the cores when annotators wait: training and acquisition share them on a small machine, and
//! the buffer of pairs comes first. While someone's `/next` is waiting for a pair, or a project with
//! people at work has fewer ready pairs than its buffer target (so they soon would wait), a running DPO
//! update holds between two steps, so the round being made for them runs at full speed; but never longer
//! than `MAX_HOLD` at a time, so a loop that cannot keep up still trains (one step, then it may hold
//! again). Holds are logged with their reason and their seconds counted for `/metrics`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest training holds for waiting annotators before it takes a step anyway.
pub(super) const MAX_HOLD: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct Cores {
    /// `/next` requests waiting for a pair now.
    waiting: AtomicUsize,
    /// Projects whose buffer of ready pairs is below its target while people are answering.
    short: Mutex<HashSet<String>>,
    /// Since when training has been holding, if it is.
    held_since: Mutex<Option<Instant>>,
    /// Seconds training held, over past holds.
    held_seconds: Mutex<f64>,
}

/// The cores a training run may use: half of them (at least one) while people are labelling, so that the
/// rounds made for them keep cores of their own for the whole run, not only between its steps; all of
/// them (None) when nobody is, or on a one-core machine.
pub(super) fn training_threads(people_at_work: bool, cores: usize) -> Option<usize> {
    (people_at_work && cores > 1).then_some(cores / 2)
}

/// Whether training should hold now: someone waits for a pair or soon will (`wanted`), and the hold so far
/// (if any) is under `max`.
pub(super) fn should_hold(wanted: bool, held_for: Option<Duration>, max: Duration) -> bool {
    wanted && held_for.is_none_or(|d| d < max)
}

/// A project's short buffer, marked for as long as it lives.
pub(super) struct ShortMark<'a> {
    cores: &'a Cores,
    project_id: String,
}

impl Drop for ShortMark<'_> {
    fn drop(&mut self) {
        self.cores
            .short
            .lock()
            .expect("lock")
            .remove(&self.project_id);
    }
}

/// A waiting `/next`, counted for as long as it lives.
pub struct Waiting<'a>(&'a Cores);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cores {
    pub(super) fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self)
    }

    /// Marks `project_id`'s buffer as short of its target while people answer, for as long as the
    /// returned mark lives (the round being made for them).
    pub(super) fn short_while(&self, project_id: &str) -> ShortMark<'_> {
        self.short
            .lock()
            .expect("lock")
            .insert(project_id.to_string());
        ShortMark {
            cores: self,
            project_id: project_id.to_string(),
        }
    }

    /// Asked by the trainer before each step.
    pub(super) fn hold_training(&self) -> bool {
        let waiting = self.waiting.load(Ordering::Relaxed) > 0;
        let short = !self.short.lock().expect("lock").is_empty();
        let mut since = self.held_since.lock().expect("lock");
        let hold = should_hold(waiting || short, since.map(|s| s.elapsed()), MAX_HOLD);
        match (hold, *since) {
            (true, None) => {
                let reason = if waiting {
                    "annotators are waiting for pairs"
                } else {
                    "the buffer of ready pairs is short while people answer"
                };
                tracing::info!(reason, "training holds");
                *since = Some(Instant::now());
            }
            (false, Some(started)) => {
                let secs = started.elapsed().as_secs_f64();
                *self.held_seconds.lock().expect("lock") += secs;
                *since = None;
                tracing::info!(held_seconds = secs, "training goes on");
            }
            _ => {}
        }
        hold
    }

    /// Seconds training has held for waiting annotators, the current hold included.
    pub(super) fn held_seconds(&self) -> f64 {
        let past = *self.held_seconds.lock().expect("lock");
        let now = self
            .held_since
            .lock()
            .expect("lock")
            .map_or(0.0, |s| s.elapsed().as_secs_f64());
        past + now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_leaves_half_the_cores_to_acquisition_while_people_label() {
        assert_eq!(training_threads(true, 2), Some(1));
        assert_eq!(training_threads(true, 16), Some(8));
        assert_eq!(training_threads(true, 3), Some(1));
        assert_eq!(
            training_threads(true, 1),
            None,
            "one core: nothing to split"
        );
        assert_eq!(
            training_threads(false, 16),
            None,
            "nobody waits: every core"
        );
    }

    #[test]
    fn training_holds_while_someone_waits_but_not_forever() {
        let max = Duration::from_secs(60);
        assert!(!should_hold(false, None, max), "nobody waits");
        assert!(should_hold(true, None, max), "someone starts waiting");
        assert!(should_hold(true, Some(Duration::from_secs(59)), max));
        assert!(
            !should_hold(true, Some(max), max),
            "a step after a full hold"
        );
        assert!(!should_hold(false, Some(Duration::from_secs(5)), max));
    }

    #[test]
    fn a_short_buffer_holds_training_until_it_is_filled() {
        let cores = Cores::default();
        let p = cores.short_while("p");
        assert!(
            cores.hold_training(),
            "people at work and too few ready pairs"
        );
        let q = cores.short_while("q");
        drop(p);
        assert!(cores.hold_training(), "another project is still short");
        drop(q);
        assert!(
            !cores.hold_training(),
            "every buffer is at its target again"
        );
    }

    #[test]
    fn a_waiting_request_is_counted_while_it_waits() {
        let cores = Cores::default();
        assert!(!cores.hold_training());
        {
            let _w = cores.waiting();
            assert!(cores.hold_training());
            assert!(cores.hold_training(), "still waiting");
        }
        assert!(!cores.hold_training(), "the request got its pair");
        assert!(cores.held_seconds() >= 0.0);
    }
}
