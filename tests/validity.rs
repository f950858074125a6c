//! What would bias an experiment (issue 13), checked through the store on both databases: rounds draw
//! prompts reproducibly from the seed and without replacement until the pool is spent, and whether a
//! completion ended at EOS reaches training.

mod common;

use std::collections::HashSet;

use common::{Backend, TestApp};
use prefloop::store::queue::{draw_prompts, training_preferences};
use serde_json::json;

db_tests!(
    prompts_are_drawn_without_replacement_until_the_pool_is_spent,
    the_same_seed_draws_the_same_prompts,
    whether_a_completion_ended_reaches_training_on_its_side,
);

fn prompts_ndjson(n: usize) -> String {
    (0..n)
        .map(|i| json!({"prompt": format!("Prompt number {i}")}).to_string() + "\n")
        .collect()
}

async fn texts(app: &TestApp, project: &str, n: i64, seed: u64) -> Vec<String> {
    draw_prompts(&app.store, project, n, seed)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.text)
        .collect()
}

async fn prompts_are_drawn_without_replacement_until_the_pool_is_spent(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "draws"})).await;
    app.import(&project, "prompts", &prompts_ndjson(10)).await;

    let mut seen = HashSet::new();
    for round in 0..3u64 {
        for text in texts(&app, &project, 3, round).await {
            assert!(
                seen.insert(text.clone()),
                "{text} came back before the pool was spent"
            );
        }
    }
    assert_eq!(seen.len(), 9);
    // The fourth round takes the last prompt, then starts the pool over.
    let fourth = texts(&app, &project, 3, 3).await;
    assert_eq!(fourth.len(), 3);
    let fresh: Vec<_> = fourth.iter().filter(|t| !seen.contains(*t)).collect();
    assert_eq!(fresh.len(), 1, "{fourth:?}");
    // A round asking for more than the pool gets each prompt once.
    let all = texts(&app, &project, 50, 4).await;
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 10);
}

async fn the_same_seed_draws_the_same_prompts(b: Backend) {
    let app = TestApp::new(b).await;
    let mut draws = Vec::new();
    for name in ["first", "second"] {
        let project = app.create_project(json!({"name": name})).await;
        app.import(&project, "prompts", &prompts_ndjson(40)).await;
        let mut rounds = Vec::new();
        for round in 0..3u64 {
            rounds.push(texts(&app, &project, 5, 100 + round).await);
        }
        draws.push(rounds);
    }
    assert_eq!(draws[0], draws[1]);
    // And another seed draws another order.
    let project = app.create_project(json!({"name": "third"})).await;
    app.import(&project, "prompts", &prompts_ndjson(40)).await;
    assert_ne!(texts(&app, &project, 5, 7).await, draws[0][0]);
}

async fn whether_a_completion_ended_reaches_training_on_its_side(b: Backend) {
    let app = TestApp::new(b).await;
    let project = app.create_project(json!({"name": "ends"})).await;
    // "cut" stopped at the length limit; "whole" (and every completion of the second pair, by default)
    // ended where its author stopped.
    let pairs = [
        json!({"prompt": "The film", "completion_a": " was cut", "completion_b": " was whole.",
               "ends_a": false}),
        json!({"prompt": "The book", "completion_a": " was long.", "completion_b": " was short."}),
    ];
    let body: String = pairs.iter().map(|p| p.to_string() + "\n").collect();
    app.import(&project, "pairs", &body).await;
    let ann = app.annotator("ann").await;
    // Always prefer the completion that begins " was c" or " was l", whichever side it is shown on.
    for _ in 0..2 {
        let (_, l) = app.next(&project, &ann).await;
        let left = l["left"].as_str().unwrap();
        let choice = if left.starts_with(" was c") || left.starts_with(" was l") {
            "left"
        } else {
            "right"
        };
        app.judge(l["lease_id"].as_str().unwrap(), &ann, choice)
            .await;
    }
    let mut prefs = training_preferences(&app.store, &project).await.unwrap();
    prefs.sort_by(|x, y| x.prompt.cmp(&y.prompt));
    let flags: Vec<_> = prefs
        .iter()
        .map(|p| {
            (
                p.prompt.as_str(),
                p.chosen.as_str(),
                p.chosen_ends,
                p.rejected_ends,
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("The book", " was long.", true, true),
            ("The film", " was cut", false, true),
        ]
    );
}
