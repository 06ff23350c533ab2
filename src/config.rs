//! Settings, read in layers: built-in defaults, then the config file, then
//! `TAGD__SECTION__KEY` environment variables, then command-line flags.
//!
//! Every key has a named default below and a commented line in
//! `config/tagd.toml`. Unknown keys and bad values are errors that name the
//! key, so a typo in the file never silently falls back to a default.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The config file read when `--config` is not given. A missing default
/// file is not an error: tagd then runs on defaults and overrides.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/tagd/tagd.toml";

/// The whole configuration, as deserialised from all layers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub watch: WatchSettings,
    pub pipeline: PipelineSettings,
    pub limits: LimitSettings,
    pub model: ModelSettings,
    pub review: ReviewSettings,
    pub database: DatabaseSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchSettings {
    /// Folders to watch for new photos.
    pub folders: Vec<PathBuf>,
    /// Watch subfolders too.
    pub recursive: bool,
    /// File name extensions that are tagged (case-insensitive, no dot).
    pub extensions: Vec<String>,
    /// A file must keep the same size and mtime for this long before it is read.
    pub settle_ms: u64,
    /// Interval of the reconciliation scan that catches missed events; 0 turns it off.
    pub rescan_interval_secs: u64,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            folders: vec![PathBuf::from("/var/lib/tagd/inbox")],
            recursive: true,
            extensions: ["jpg", "jpeg", "png", "webp"].map(String::from).to_vec(),
            settle_ms: 500,
            rescan_interval_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Threads that decode and preprocess images; 0 means one per CPU.
    pub workers: usize,
    /// Most images per inference call.
    pub batch_size: usize,
    /// How long a partial batch waits for more images.
    pub batch_wait_ms: u64,
    /// Most outcomes written to the catalogue in one transaction.
    pub write_batch_size: usize,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings { workers: 0, batch_size: 32, batch_wait_ms: 5, write_batch_size: 256 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Larger files are failed with `file_too_large` without being read.
    pub max_image_bytes: u64,
    /// Images whose header claims more pixels are failed with
    /// `too_many_pixels` before any pixel memory is allocated.
    pub max_pixels: u64,
    /// Images with a shorter edge are failed with `image_too_small`.
    pub min_edge_px: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings { max_image_bytes: 64 * 1024 * 1024, max_pixels: 100_000_000, min_edge_px: 8 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// The model folder: `model.toml` plus the ONNX file it names.
    pub dir: PathBuf,
    /// Path of the ONNX Runtime shared library (`libonnxruntime.so.1.31.1`).
    /// Empty: the `ORT_DYLIB_PATH` environment variable, else
    /// `libonnxruntime.so` on the loader's search path.
    pub onnxruntime_library: PathBuf,
    /// ONNX Runtime threads per inference call.
    pub intra_threads: usize,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            dir: PathBuf::from("/usr/share/tagd/models/fashion-mnist"),
            onnxruntime_library: PathBuf::new(),
            intra_threads: 1,
        }
    }
}

/// Review thresholds. Unset values come from the model's manifest, which
/// carries thresholds chosen on its validation split.
/// `[review.scene]`: unset values come from the manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SceneReviewSettings {
    pub min_confidence: Option<f32>,
    pub min_margin: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewSettings {
    /// Flag `low_confidence` below this calibrated top-1 probability.
    pub min_confidence: Option<f32>,
    /// Flag `small_margin` when top-1 minus top-2 is below this.
    pub min_margin: Option<f32>,
    /// Per-class `min_confidence` by label name, over the manifest's.
    pub min_confidence_per_class: std::collections::BTreeMap<String, f32>,
    /// The rule for photos cut out of a scene (floors, beds, hangers) rather
    /// than shot on a plain backdrop, over the manifest's `[review.scene]`.
    pub scene: SceneReviewSettings,
    /// Flag `tiny_image` when the photo's shorter edge is below this: a
    /// little more than the model's 28 pixels, so that the trimmed object
    /// would have to be enlarged rather than reduced.
    pub tiny_image_edge_px: u32,
    /// Flag `low_contrast` when the object differs from the background by
    /// less than this share of full intensity (white items on white).
    pub min_object_contrast: f32,
}

impl Default for ReviewSettings {
    fn default() -> Self {
        ReviewSettings {
            min_confidence: None,
            min_margin: None,
            min_confidence_per_class: Default::default(),
            scene: SceneReviewSettings::default(),
            tiny_image_edge_px: 32,
            min_object_contrast: 0.12,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`.
    pub url: String,
    /// Longest wait between retries while the database is unavailable.
    pub max_retry_backoff_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite:///var/lib/tagd/catalogue.db".to_string(),
            max_retry_backoff_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `auto` (plain lines without timestamps under systemd, else with),
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `tagd=debug`; `RUST_LOG` wins.
    pub level: String,
    /// Interval of the info-level progress summary; 0 turns it off.
    pub summary_interval_secs: u64,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Auto,
            level: "info".to_string(),
            summary_interval_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub watch_folders: Vec<PathBuf>,
    pub database_url: Option<String>,
    pub model_dir: Option<PathBuf>,
    pub onnxruntime_library: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

/// Where the settings came from, for the start-up log and `tagd check`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
}

/// Reads every layer and validates the result.
///
/// `file` is `--config`; when it is `None` the default file is read if it
/// exists. `env` is the process environment (a parameter so tests can pass
/// their own).
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> anyhow::Result<Loaded> {
    let file = match file {
        Some(path) if !path.exists() => bail!("config file {} does not exist", path.display()),
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|path| path.exists()),
    };

    let defaults = config::Config::try_from(&Settings::default())
        .context("built-in defaults do not serialise")?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = &file {
        builder =
            builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
    }
    builder = builder.add_source(environment_layer(env));

    let raw = builder.build().with_context(|| read_error_context(file.as_deref()))?;
    let mut settings: Settings =
        raw.try_deserialize().with_context(|| read_error_context(file.as_deref()))?;

    apply_overrides(&mut settings, overrides);
    settings.validate()?;
    Ok(Loaded { settings, file })
}

fn read_error_context(file: Option<&Path>) -> String {
    match file {
        Some(path) => {
            format!("invalid configuration (file {}, or TAGD__ variables)", path.display())
        }
        None => "invalid configuration in TAGD__ environment variables".to_string(),
    }
}

/// `TAGD__WATCH__SETTLE_MS=250` sets `watch.settle_ms`. List keys take
/// comma-separated values.
fn environment_layer(env: impl IntoIterator<Item = (String, String)>) -> config::Environment {
    let vars: config::Map<String, String> =
        env.into_iter().filter(|(key, _)| key.starts_with("TAGD__")).collect();
    config::Environment::with_prefix("TAGD")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("watch.folders")
        .with_list_parse_key("watch.extensions")
        .source(Some(vars))
}

fn apply_overrides(settings: &mut Settings, overrides: &Overrides) {
    if !overrides.watch_folders.is_empty() {
        settings.watch.folders = overrides.watch_folders.clone();
    }
    if let Some(url) = &overrides.database_url {
        settings.database.url = url.clone();
    }
    if let Some(dir) = &overrides.model_dir {
        settings.model.dir = dir.clone();
    }
    if let Some(library) = &overrides.onnxruntime_library {
        settings.model.onnxruntime_library = library.clone();
    }
    if let Some(format) = overrides.log_format {
        settings.log.format = format;
    }
}

impl Settings {
    /// Checks values that deserialise but make no sense, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, why: &str| {
            if !ok {
                problems.push(format!("{key}: {why}"));
            }
        };

        check(!self.watch.folders.is_empty(), "watch.folders", "must name at least one folder");
        check(
            !self.watch.extensions.is_empty(),
            "watch.extensions",
            "must list at least one extension",
        );
        check(
            self.watch.extensions.iter().all(|ext| !ext.is_empty() && !ext.contains('.')),
            "watch.extensions",
            "extensions are written without a dot, such as \"jpg\"",
        );
        check(self.pipeline.batch_size >= 1, "pipeline.batch_size", "must be at least 1");
        check(self.pipeline.batch_size <= 1024, "pipeline.batch_size", "must be at most 1024");
        check(
            self.pipeline.write_batch_size >= 1,
            "pipeline.write_batch_size",
            "must be at least 1",
        );
        check(self.pipeline.workers <= 256, "pipeline.workers", "must be at most 256");
        check(self.limits.max_image_bytes > 0, "limits.max_image_bytes", "must be positive");
        check(self.limits.max_pixels > 0, "limits.max_pixels", "must be positive");
        check(self.model.intra_threads >= 1, "model.intra_threads", "must be at least 1");
        check(
            is_probability(self.review.min_confidence),
            "review.min_confidence",
            "must be within 0 and 1",
        );
        check(
            is_probability(self.review.min_margin),
            "review.min_margin",
            "must be within 0 and 1",
        );
        for (label, value) in &self.review.min_confidence_per_class {
            check(
                (0.0..=1.0).contains(value),
                &format!("review.min_confidence_per_class.{label}"),
                "must be within 0 and 1",
            );
        }
        check(
            (0.0..=1.0).contains(&self.review.min_object_contrast),
            "review.min_object_contrast",
            "must be within 0 and 1",
        );
        check(
            self.database.url.starts_with("sqlite:")
                || self.database.url.starts_with("postgres://")
                || self.database.url.starts_with("postgresql://"),
            "database.url",
            "must start with sqlite:, postgres:// or postgresql://",
        );
        check(!self.log.level.trim().is_empty(), "log.level", "must not be empty");

        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  {}", problems.join("\n  "))
        }
    }

    /// Decode workers, with 0 resolved to the number of CPUs.
    pub fn workers(&self) -> usize {
        match self.pipeline.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// The file extensions tagd reads, lower-cased.
    pub fn extensions(&self) -> Vec<String> {
        self.watch.extensions.iter().map(|ext| ext.to_ascii_lowercase()).collect()
    }
}

fn is_probability(value: Option<f32>) -> bool {
    value.is_none_or(|v| (0.0..=1.0).contains(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagd.toml");
        std::fs::write(&path, toml).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load(Some(&path), env, &Overrides::default()).map(|loaded| loaded.settings)
    }

    #[test]
    fn defaults_apply_when_the_file_is_empty() {
        let settings = load_str("", &[]).unwrap();
        assert_eq!(settings.watch.settle_ms, 500);
        assert_eq!(settings.pipeline.batch_size, 32);
        assert!(settings.watch.recursive);
    }

    #[test]
    fn file_then_environment_then_flags() {
        let toml =
            "[watch]\nsettle_ms = 900\nfolders = [\"/a\"]\n[database]\nurl = \"sqlite://x.db\"\n";
        let env = [("TAGD__WATCH__SETTLE_MS", "250"), ("TAGD__WATCH__FOLDERS", "/b,/c")];
        let settings = load_str(toml, &env).unwrap();
        assert_eq!(settings.watch.settle_ms, 250);
        assert_eq!(settings.watch.folders, vec![PathBuf::from("/b"), PathBuf::from("/c")]);
        assert_eq!(settings.database.url, "sqlite://x.db");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagd.toml");
        std::fs::write(&path, toml).unwrap();
        let overrides =
            Overrides { database_url: Some("postgres://db/x".into()), ..Overrides::default() };
        let loaded = load(Some(&path), Vec::new(), &overrides).unwrap();
        assert_eq!(loaded.settings.database.url, "postgres://db/x");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let error = load_str("[watch]\nsettle_msec = 5\n", &[]).unwrap_err();
        assert!(format!("{error:#}").contains("settle_msec"), "{error:#}");
    }

    #[test]
    fn an_unknown_section_is_an_error_naming_it() {
        let error = load_str("[wacth]\nsettle_ms = 5\n", &[]).unwrap_err();
        assert!(format!("{error:#}").contains("wacth"), "{error:#}");
    }

    #[test]
    fn a_bad_value_names_the_key() {
        let error = load_str("[watch]\nsettle_ms = \"soon\"\n", &[]).unwrap_err();
        assert!(format!("{error:#}").contains("settle_ms"), "{error:#}");

        let error = load_str("[pipeline]\nbatch_size = 0\n", &[]).unwrap_err();
        assert!(format!("{error:#}").contains("pipeline.batch_size"), "{error:#}");

        let error = load_str("[review]\nmin_confidence = 1.5\n", &[]).unwrap_err();
        assert!(format!("{error:#}").contains("review.min_confidence"), "{error:#}");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let error =
            load(Some(Path::new("/nonexistent/tagd.toml")), Vec::new(), &Overrides::default())
                .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/tagd.toml"));
    }

    #[test]
    fn the_shipped_example_config_parses_and_matches_the_defaults() {
        let example = include_str!("../config/tagd.toml");
        let settings = load_str(example, &[]).unwrap();
        let defaults = Settings::default();
        assert_eq!(
            serde_json::to_value(&settings).unwrap(),
            serde_json::to_value(&defaults).unwrap(),
            "config/tagd.toml must list every key with its default"
        );
    }
}
