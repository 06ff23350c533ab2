//! The command line: `run`, `scan`, `classify`, `review`, `check`.

mod check;
mod classify;
mod convert;
mod eval;
mod review;
mod run;
mod scan;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, LogFormat, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "tagd",
    version,
    about = "Tags product photos as they arrive, into a SQL catalogue"
)]
pub struct Cli {
    /// Config file [default: /etc/tagd/tagd.toml, if it exists]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Catalogue database: sqlite://PATH or postgres://USER@HOST/DB (database.url)
    #[arg(long, global = true, value_name = "URL")]
    database: Option<String>,

    /// Model folder holding model.toml and the ONNX file (model.dir)
    #[arg(long, global = true, value_name = "DIR")]
    model: Option<PathBuf>,

    /// ONNX Runtime 1.31 shared library (model.onnxruntime_library)
    #[arg(long, global = true, value_name = "PATH")]
    onnxruntime: Option<PathBuf>,

    /// Log format (log.format)
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch folders and tag photos as they arrive, until stopped
    Run {
        /// Folder to watch, instead of watch.folders (repeatable)
        #[arg(long = "watch", value_name = "DIR")]
        watch: Vec<PathBuf>,
    },
    /// Tag every photo under the folders once, with a progress bar, then exit
    Scan {
        #[arg(required = true, value_name = "DIR")]
        folders: Vec<PathBuf>,
        /// No progress bar (it is also off when stderr is not a terminal)
        #[arg(long)]
        no_progress: bool,
    },
    /// Classify photos without a database: label, confidence, top 3
    Classify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Write the 28x28 image the model saw for each photo into DIR
        #[arg(long, value_name = "DIR")]
        explain: Option<PathBuf>,
        /// One JSON object per photo instead of text
        #[arg(long)]
        json: bool,
    },
    /// Write the 28x28 images a model would see, as PNG, without a model
    Convert {
        /// Photos, or folders of photos
        #[arg(required = true, value_name = "PATH")]
        inputs: Vec<PathBuf>,
        /// Where the PNG files go (named after the photos)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The conversion to apply
        #[arg(long, value_name = "ID", default_value = crate::preprocess::FMNIST_V4)]
        preprocessing: String,
    },
    /// Measure the model on labelled photos: accuracy, per class, confusion
    Eval {
        /// A folder with labels.csv (file,fmnist_labels) or class subfolders
        #[arg(value_name = "DIR")]
        folder: PathBuf,
        /// The report as JSON, with every photo's result
        #[arg(long)]
        json: bool,
        /// Write, for each mistake, the photo beside what the model saw into DIR
        #[arg(long, value_name = "DIR")]
        explain: Option<PathBuf>,
        /// Write a contact sheet of the mistakes as a PNG
        #[arg(long, value_name = "FILE")]
        sheet: Option<PathBuf>,
        /// No progress bar
        #[arg(long)]
        no_progress: bool,
        /// Turn one preprocessing step off, to measure what it buys: border,
        /// mask, plain, sides, clean, garment, body, blank, area, sharpen or
        /// stretch
        #[arg(long, value_name = "STEP", conflicts_with = "with")]
        without: Option<String>,
        /// Turn on one preprocessing step the model's recipe leaves out, to
        /// measure what it would do (same step names)
        #[arg(long, value_name = "STEP")]
        with: Option<String>,
    },
    /// List the review queue, or record a person's decision
    Review {
        #[command(subcommand)]
        action: review::Action,
    },
    /// Check config, model, ONNX Runtime and database; exit non-zero on any problem
    Check,
}

/// Parses the command line, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        watch_folders: match &cli.command {
            Command::Run { watch } => watch.clone(),
            _ => Vec::new(),
        },
        database_url: cli.database.clone(),
        model_dir: cli.model.clone(),
        onnxruntime_library: cli.onnxruntime.clone(),
        log_format: cli.log_format,
    };

    let loaded = match config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("tagd: {error:#}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(loaded.settings.log.format, &loaded.settings.log.level);

    if !matches!(cli.command, Command::Run { .. }) {
        restore_default_sigpipe();
    }

    let result = match cli.command {
        Command::Check => return check::check(&loaded),
        Command::Convert { inputs, out, preprocessing } => {
            convert::convert(&loaded.settings, &inputs, &out, &preprocessing)
        }
        Command::Eval { folder, json, explain, sheet, no_progress, without, with } => eval::eval(
            &loaded.settings,
            &folder,
            eval::Outputs {
                json,
                explain: explain.as_deref(),
                sheet: sheet.as_deref(),
                progress: !no_progress,
                without: without.as_deref(),
                with: with.as_deref(),
            },
        ),
        Command::Classify { files, explain, json } => {
            classify::classify(&loaded.settings, &files, explain.as_deref(), json)
        }
        command => runtime().and_then(|runtime| {
            runtime.block_on(async {
                match command {
                    Command::Run { .. } => run::run(&loaded).await,
                    Command::Scan { folders, no_progress } => {
                        scan::scan(&loaded.settings, &folders, !no_progress).await
                    }
                    Command::Review { action } => review::review(&loaded.settings, action).await,
                    Command::Check
                    | Command::Classify { .. }
                    | Command::Convert { .. }
                    | Command::Eval { .. } => {
                        unreachable!("handled above")
                    }
                }
            })
        }),
    };

    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tagd: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Lets `tagd review list | head` end quietly instead of failing to print.
/// The daemon keeps Rust's default (writes fail, the process lives on): a
/// restarted journald must not kill it.
fn restore_default_sigpipe() {
    // SAFETY: called once at start-up, before any thread is spawned.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
