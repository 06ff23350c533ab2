//! tagd tags product photos as they arrive.
//!
//! Shops drop photos into a watched folder; tagd converts each one the way
//! Fashion-MNIST was made, classifies it with a convolutional network in
//! ONNX Runtime, and writes the category, a calibrated confidence and a
//! review flag into a SQL catalogue.
//!
//! # Layout
//!
//! - [`config`]: settings in layers (defaults, file, environment, flags).
//! - [`watch`]: discovery: file events, the settle window, reconciliation scans.
//! - [`preprocess`]: decoding within limits and the Fashion-MNIST conversion.
//! - [`model`]: the model folder and the contract in its manifest.
//! - [`infer`]: ONNX Runtime, calibration and the review decision.
//! - [`store`]: the catalogue (SQLite or Postgres), which is also the queue.
//! - [`pipeline`]: the stages wired together, from pending row to prediction.
//! - [`evaluate`], [`sheet`]: accuracy on labelled photos, and pictures of the mistakes.
//! - [`cli`]: the commands (`run`, `scan`, `classify`, `eval`, `review`, `check`).

pub mod app;
pub mod cli;
pub mod config;
pub mod discover;
pub mod evaluate;
pub mod infer;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod sheet;
pub mod store;
pub mod telemetry;
pub mod watch;
