//! A fixed-capacity rolling window with O(1) mean/std and O(log n)-maintained order statistics.
//! STUB.

/// Rolling window over the last `capacity` samples of one feature.
#[derive(Clone, Debug)]
pub struct RollingWindow {
    capacity: usize,
}

impl RollingWindow {
    pub fn new(capacity: usize) -> Self {
        RollingWindow { capacity }
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Adds a sample, evicting the oldest when full.
    pub fn push(&mut self, _x: f64) {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn mean(&self) -> f64 {
        todo!()
    }
    /// Sample standard deviation (n - 1).
    pub fn std(&self) -> f64 {
        todo!()
    }
    pub fn min(&self) -> f64 {
        todo!()
    }
    pub fn max(&self) -> f64 {
        todo!()
    }
    pub fn median(&self) -> f64 {
        todo!()
    }
    /// Median absolute deviation from the median (unscaled).
    pub fn mad(&self) -> f64 {
        todo!()
    }
    /// Linear-interpolated quantile, q in [0, 1].
    pub fn quantile(&self, _q: f64) -> f64 {
        todo!()
    }
    /// Most recent sample.
    pub fn last(&self) -> Option<f64> {
        todo!()
    }
}
