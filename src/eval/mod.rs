//! Evaluation of detections against labelled data.

pub mod episodes;
pub mod nab;
pub mod skab;

#[cfg(test)]
mod tests;
