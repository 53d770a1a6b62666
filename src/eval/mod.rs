//! Evaluation of detections against labelled data.

pub mod episodes;

#[cfg(test)]
mod tests;
