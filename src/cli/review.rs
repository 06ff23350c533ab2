//! `tagd review`: the queue of uncertain predictions, and a person's
//! decisions. A decision lives in its own table and is never overwritten
//! when tagd tags the image again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::app;
use crate::config::Settings;
use crate::store::Decision;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Flagged images without a decision, least confident first
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// The model's label is right
    Accept {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Who decided [default: $USER]
        #[arg(long)]
        reviewer: Option<String>,
    },
    /// The right label is LABEL (one of the model's labels)
    Relabel {
        #[arg(value_name = "PATH")]
        path: PathBuf,
        #[arg(value_name = "LABEL")]
        label: String,
        /// Who decided [default: $USER]
        #[arg(long)]
        reviewer: Option<String>,
    },
}

pub async fn review(settings: &Settings, action: Action) -> anyhow::Result<ExitCode> {
    let catalogue = app::open_catalogue(settings, Duration::from_secs(5)).await?;
    let result = match action {
        Action::List { limit } => {
            let queue = catalogue.review_queue(limit).await?;
            if queue.is_empty() {
                println!("the review queue is empty");
            }
            for item in queue {
                println!(
                    "{:>6.3}  {:<12} {:<28} {}",
                    item.confidence,
                    item.label,
                    item.review_reason.unwrap_or_default(),
                    item.path
                );
            }
            Ok(())
        }
        Action::Accept { paths, reviewer } => {
            let reviewer = reviewer_name(reviewer);
            for path in paths {
                let path = absolute(&path);
                catalogue.record_review(&path, &Decision::Accept, &reviewer).await?;
                println!("accepted {path}");
            }
            Ok(())
        }
        Action::Relabel { path, label, reviewer } => {
            let path = absolute(&path);
            catalogue
                .record_review(&path, &Decision::Relabel(label.clone()), &reviewer_name(reviewer))
                .await?;
            println!("relabelled {path} as {label}");
            Ok(())
        }
    };
    catalogue.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

fn reviewer_name(given: Option<String>) -> String {
    given.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".to_string())
}

/// Catalogue paths are absolute; accept what a person types.
fn absolute(path: &std::path::Path) -> String {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}
