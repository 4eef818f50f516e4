//! `seg-eval`: the inference and evaluation stage. Predicts tumour masks for CTs in each CT's own
//! geometry with a trained checkpoint (using ct-preprocess's own slice functions, so prediction
//! sees exactly what training saw), measures them against references per case at original
//! resolution (Dice, IoU, precision, recall, HD95, volumes, lesion detection), and draws the
//! report a person reads to trust a run.

pub mod components;
pub mod config;
pub mod evaluate;
pub mod metrics;
pub mod predict;
pub mod render;
pub mod report;
pub mod shard;
pub mod stage;
pub mod viewer;

pub use config::EvalConfig;
pub use metrics::{CaseMetrics, case_metrics};
pub use predict::{PredictOptions, Prediction, Predictor};
