//! `tagd check`: everything tagd needs, checked before systemd starts it.
//! Each line says what was checked; the exit code is non-zero on any
//! problem.

use std::process::ExitCode;
use std::time::Duration;

use crate::app;
use crate::config::Loaded;
use crate::infer;
use crate::model::ModelFolder;

pub fn check(loaded: &Loaded) -> ExitCode {
    let settings = &loaded.settings;
    let mut failures = 0;
    let mut report = |what: &str, result: anyhow::Result<String>| match result {
        Ok(detail) => println!("ok    {what}: {detail}"),
        Err(error) => {
            failures += 1;
            println!("FAIL  {what}: {error:#}");
        }
    };

    let file =
        loaded.file.as_ref().map_or("built-in defaults".to_string(), |f| f.display().to_string());
    report("config", Ok(file));

    report(
        "watch folders",
        app::discovery(settings, &settings.watch.folders).map(|d| {
            d.folders.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        }),
    );

    let library = infer::library_path(&settings.model.onnxruntime_library);
    let runtime = infer::load_runtime(&library);
    report(
        "onnxruntime",
        runtime
            .as_ref()
            .map(|_| library.display().to_string())
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    );

    report(
        "model",
        ModelFolder::open(&settings.model.dir).map(|model| {
            format!(
                "{} version {} ({}), sha256 {}",
                model.manifest.name,
                model.manifest.version,
                model.manifest.preprocessing,
                model.manifest.sha256
            )
        }),
    );

    if runtime.is_ok() {
        report(
            "inference",
            app::load_classifier(settings).map(|(classifier, _)| {
                format!("{} labels, warm-up run passed", classifier.model().manifest.labels.len())
            }),
        );
    }

    let database = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                let catalogue = app::open_catalogue(settings, Duration::ZERO).await?;
                let counts = catalogue.status_counts().await?;
                catalogue.close().await;
                Ok(format!(
                    "{} (migrated; {} tagged, {} pending, {} failed)",
                    app::redact(&settings.database.url),
                    counts.tagged,
                    counts.pending,
                    counts.failed
                ))
            })
        });
    report("database", database);

    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{failures} problem(s) found");
        ExitCode::FAILURE
    }
}
