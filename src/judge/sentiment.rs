//! The built-in sentiment judge: prefers the more positive completion, scored by VADER (the
//! `vader_sentiment` lexicon). A cheap automatic oracle for demos and for the paper's IMDB experiment,
//! where the preferred continuation is the most positive one.

use vader_sentiment::SentimentIntensityAnalyzer;

use super::Verdict;
use crate::domain::Choice;

pub struct SentimentJudge {
    analyzer: SentimentIntensityAnalyzer<'static>,
    /// Compound scores closer than this are a tie.
    tie_margin: f64,
}

impl Default for SentimentJudge {
    fn default() -> Self {
        SentimentJudge::new(0.0)
    }
}

impl SentimentJudge {
    pub fn new(tie_margin: f64) -> SentimentJudge {
        SentimentJudge {
            analyzer: SentimentIntensityAnalyzer::new(),
            tie_margin,
        }
    }

    /// VADER's compound score of `text`, in [-1, 1].
    pub fn positivity(&self, text: &str) -> f64 {
        self.analyzer
            .polarity_scores(text)
            .get("compound")
            .copied()
            .unwrap_or(0.0)
    }

    /// Left or right, whichever reads more positive; a tie when they are within the margin.
    pub fn judge(&self, left: &str, right: &str) -> Verdict {
        let (l, r) = (self.positivity(left), self.positivity(right));
        let choice = if (l - r).abs() <= self.tie_margin {
            Choice::Tie
        } else if l > r {
            Choice::Left
        } else {
            Choice::Right
        };
        Verdict {
            choice,
            rationale: format!("sentiment: left {l:.3}, right {r:.3}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_more_positive_side_whichever_side_it_is_on() {
        let judge = SentimentJudge::default();
        let good = "a wonderful, moving film with a great cast";
        let bad = "a dull, boring mess and a terrible waste of time";
        assert_eq!(judge.judge(good, bad).choice, Choice::Left);
        assert_eq!(judge.judge(bad, good).choice, Choice::Right);
        assert!(judge.positivity(good) > 0.5 && judge.positivity(bad) < -0.5);
    }

    #[test]
    fn equal_texts_tie() {
        let judge = SentimentJudge::new(0.05);
        assert_eq!(judge.judge("the film", "the film").choice, Choice::Tie);
    }
}
