//! Evaluation of detections against labelled data.

pub mod episodes;
