//! Isolation Forest (Liu, Ting, Zhou 2008) on ndarray, with scikit-learn's conventions: trees grown on
//! sub-samples of `max_samples` rows to depth ceil(log2(max_samples)), a split picks a random non-constant
//! feature and a threshold uniform in its [min, max), rows with `x <= threshold` go left, the path length
//! of a leaf is its depth plus c(samples in the leaf), and the score is 2^(-E[h(x)] / c(max_samples)).
//!
//! Hand-written rather than a crate: `extended-isolation-forest` splits on hyperplanes (no per-feature
//! attribution), `isolation_forest` exposes no node covers; exact TreeSHAP needs the node arrays.
//! Features are used unscaled: axis-aligned random splits are invariant to per-feature scaling, and raw
//! thresholds keep the exported forest readable.

use super::treeshap::{self, Scratch, TreeView};
use super::{Fit, Model, ModelError};
use ndarray::{ArrayView2, Axis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Hyper-parameters of [`IsolationForest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsolationForestParams {
    /// Trees in the forest.
    pub n_estimators: usize,
    /// Rows drawn (without replacement) for each tree; capped at the training rows. At most
    /// [`MAX_SAMPLES`] (32,768).
    pub max_samples: usize,
    /// Expected share of anomalies in the training data; sets the threshold at the (1 - contamination)
    /// quantile of the training scores. In (0, 0.5].
    pub contamination: f64,
    /// Seed of the random generator: the same data and seed give the same forest, whatever the threads.
    pub seed: u64,
    /// Worker threads for training (0 = the machine's cores).
    #[serde(skip)]
    pub threads: usize,
}

impl Default for IsolationForestParams {
    fn default() -> Self {
        IsolationForestParams {
            n_estimators: 100,
            max_samples: 256,
            contamination: 0.01,
            seed: 42,
            threads: 0,
        }
    }
}

impl IsolationForestParams {
    pub fn check(&self) -> Result<(), ModelError> {
        if self.n_estimators == 0 || self.n_estimators > 10_000 {
            return Err(ModelError::param("n_estimators", "must be in 1..=10000"));
        }
        if !(2..=MAX_SAMPLES).contains(&self.max_samples) {
            return Err(ModelError::param(
                "max_samples",
                format!("must be in 2..={MAX_SAMPLES}"),
            ));
        }
        if !(self.contamination > 0.0 && self.contamination <= 0.5) {
            return Err(ModelError::param(
                "contamination",
                format!("must be in (0, 0.5], got {}", self.contamination),
            ));
        }
        Ok(())
    }
}

/// Largest `max_samples`: a tree grown on n rows has at most 2n - 1 nodes, and node indices, feature
/// ids and covers are held as u16.
pub const MAX_SAMPLES: usize = 32_768;

/// One isolation tree as compact node arrays (see [`TreeView`]); leaves have `left == right == 0`.
/// Per node 24 bytes in two buffers: left, right, feature and cover (training samples reaching the
/// node) as u16, threshold and value as f64. A tree holds at most 65,535 nodes ([`MAX_SAMPLES`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TreeFile", into = "TreeFile")]
pub struct IsolationTree {
    /// `[left | right | feature | cover]`, one slot per node each.
    small: Box<[u16]>,
    /// `[threshold | value]`, one slot per node each. Values are derived on load (leaf: depth +
    /// c(cover); inside: the cover-weighted mean of the children).
    wide: Box<[f64]>,
    depth: usize,
}

/// What a tree stores on disk: only what cannot be derived.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeFile {
    left: Vec<u32>,
    right: Vec<u32>,
    feature: Vec<u32>,
    threshold: Vec<f64>,
    cover: Vec<u32>,
}

impl From<IsolationTree> for TreeFile {
    fn from(t: IsolationTree) -> Self {
        let wide = |v: &[u16]| v.iter().map(|&x| u32::from(x)).collect();
        TreeFile {
            left: wide(t.left()),
            right: wide(t.right()),
            feature: wide(t.feature()),
            threshold: t.thresholds().to_vec(),
            cover: wide(t.cover()),
        }
    }
}

impl TryFrom<TreeFile> for IsolationTree {
    type Error = String;
    fn try_from(f: TreeFile) -> Result<Self, String> {
        let n = f.left.len();
        if n == 0 {
            return Err("tree without nodes".into());
        }
        if [
            f.right.len(),
            f.feature.len(),
            f.threshold.len(),
            f.cover.len(),
        ]
        .iter()
        .any(|&l| l != n)
        {
            return Err("tree node arrays differ in length".into());
        }
        // Children must come after their parent (pre-order), which also rules out cycles.
        for i in 0..n {
            let (l, r) = (f.left[i] as usize, f.right[i] as usize);
            if (l == 0) != (r == 0) || (l != 0 && (l <= i || r <= i || l >= n || r >= n)) {
                return Err(format!("node {i}: bad children {l}, {r}"));
            }
        }
        IsolationTree::from_parts(&f.left, &f.right, &f.feature, &f.threshold, &f.cover)
    }
}

impl IsolationTree {
    /// Packs checked node arrays (children after their parent) and derives the node values.
    fn from_parts(
        left: &[u32],
        right: &[u32],
        feature: &[u32],
        threshold: &[f64],
        cover: &[u32],
    ) -> Result<Self, String> {
        let n = left.len();
        if n > usize::from(u16::MAX) {
            return Err(format!(
                "tree of {n} nodes: at most {} (max_samples <= {MAX_SAMPLES})",
                u16::MAX
            ));
        }
        let mut small = Vec::with_capacity(4 * n);
        for (what, part) in [
            ("left", left),
            ("right", right),
            ("feature", feature),
            ("cover", cover),
        ] {
            for (i, &v) in part.iter().enumerate() {
                small.push(
                    u16::try_from(v)
                        .map_err(|_| format!("node {i}: {what} {v} is above {}", u16::MAX))?,
                );
            }
        }
        let mut depths = vec![0usize; n];
        for i in 0..n {
            if left[i] != 0 {
                depths[left[i] as usize] = depths[i] + 1;
                depths[right[i] as usize] = depths[i] + 1;
            }
        }
        let cover_f = |i: usize| f64::from(cover[i]);
        let mut value = vec![0.0; n];
        // Children follow parents, so a reverse sweep sees children first.
        for i in (0..n).rev() {
            if left[i] == 0 {
                value[i] = depths[i] as f64 + average_path_length(cover[i] as usize);
            } else {
                let (l, r) = (left[i] as usize, right[i] as usize);
                let w = cover_f(l) + cover_f(r);
                if w <= 0.0 || cover_f(i) != w {
                    return Err(format!("node {i}: cover differs from its children's"));
                }
                value[i] = (value[l] * cover_f(l) + value[r] * cover_f(r)) / w;
            }
        }
        let mut wide = Vec::with_capacity(2 * n);
        wide.extend_from_slice(threshold);
        wide.extend_from_slice(&value);
        Ok(IsolationTree {
            depth: depths.iter().copied().max().unwrap_or(0),
            small: small.into_boxed_slice(),
            wide: wide.into_boxed_slice(),
        })
    }

    pub fn n_nodes(&self) -> usize {
        self.wide.len() / 2
    }

    fn small_part(&self, k: usize) -> &[u16] {
        let n = self.n_nodes();
        &self.small[k * n..(k + 1) * n]
    }

    /// Left child of each node (0: a leaf).
    pub fn left(&self) -> &[u16] {
        self.small_part(0)
    }

    /// Right child of each node (0: a leaf).
    pub fn right(&self) -> &[u16] {
        self.small_part(1)
    }

    /// Split feature of each inner node (0 at leaves).
    pub fn feature(&self) -> &[u16] {
        self.small_part(2)
    }

    /// Training samples reaching each node.
    pub fn cover(&self) -> &[u16] {
        self.small_part(3)
    }

    /// Split threshold of each inner node (`x <= threshold` goes left; 0 at leaves).
    pub fn thresholds(&self) -> &[f64] {
        &self.wide[..self.n_nodes()]
    }

    /// The node values shap's tree model expects (leaf: depth + c(n); inside: weighted mean).
    pub fn values(&self) -> &[f64] {
        &self.wide[self.n_nodes()..]
    }

    /// Path length of `row` (depth of its leaf plus c(leaf samples)).
    #[inline]
    pub fn path_length(&self, row: &[f64]) -> f64 {
        let (left, right, feature) = (self.left(), self.right(), self.feature());
        let (threshold, value) = self.wide.split_at(self.n_nodes());
        let mut node = 0usize;
        while left[node] != 0 {
            node = if row[feature[node] as usize] <= threshold[node] {
                left[node] as usize
            } else {
                right[node] as usize
            };
        }
        value[node]
    }

    /// Heap bytes of the node buffers.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.small) + std::mem::size_of_val(&*self.wide)
    }

    fn view(&self) -> TreeView<'_> {
        TreeView {
            left: self.left(),
            right: self.right(),
            feature: self.feature(),
            threshold: self.thresholds(),
            cover: self.cover(),
            value: self.values(),
        }
    }
}

/// c(n): the average path length of an unsuccessful search in a binary search tree of n items, which
/// normalises path lengths (Liu et al., eq. 1).
pub fn average_path_length(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + 0.577_215_664_901_532_9) - 2.0 * (n - 1.0) / n
        }
    }
}

/// A fitted Isolation Forest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    pub params: IsolationForestParams,
    pub n_features: usize,
    /// Rows each tree was grown on (max_samples capped at the training rows).
    pub samples_per_tree: usize,
    /// Score above which a row is an anomaly.
    pub threshold: f64,
    pub trees: Vec<IsolationTree>,
}

impl Fit for IsolationForestParams {
    type Model = IsolationForest;

    fn fit(&self, x: ArrayView2<'_, f64>) -> Result<IsolationForest, ModelError> {
        self.check()?;
        let (n, d) = x.dim();
        if n < 2 || d == 0 {
            return Err(ModelError::Data(format!(
                "isolation forest needs at least 2 rows and 1 feature, got {n} x {d}"
            )));
        }
        if d > usize::from(u16::MAX) + 1 {
            return Err(ModelError::Data(format!(
                "isolation forest takes at most {} features, got {d}",
                usize::from(u16::MAX) + 1
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Data("non-finite value in training data".into()));
        }
        let _span = tracing::info_span!("train_isolation_forest", rows = n, features = d).entered();
        let samples = self.max_samples.min(n);
        let max_depth = (samples as f64).log2().ceil() as usize;
        let threads = effective_threads(self.threads);
        let per_thread = self.n_estimators.div_ceil(threads);
        let tree_ids: Vec<usize> = (0..self.n_estimators).collect();
        let mut trees: Vec<IsolationTree> = Vec::with_capacity(self.n_estimators);
        std::thread::scope(|scope| {
            let handles: Vec<_> = tree_ids
                .chunks(per_thread)
                .map(|ids| {
                    scope.spawn(move || {
                        ids.iter()
                            .map(|&t| grow_tree(x, samples, max_depth, tree_seed(self.seed, t)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                trees.extend(h.join().expect("tree growing does not panic"));
            }
        });
        let mut forest = IsolationForest {
            params: self.clone(),
            n_features: d,
            samples_per_tree: samples,
            threshold: f64::INFINITY,
            trees,
        };
        let scores = forest.score_rows(x, threads);
        forest.threshold = quantile(scores, 1.0 - self.contamination);
        Ok(forest)
    }
}

fn effective_threads(requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// A tree's own seed, so trees do not depend on which thread grew them (SplitMix64 of seed and index).
fn tree_seed(seed: u64, tree: usize) -> u64 {
    let mut z = seed
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((tree as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Linear-interpolated quantile (numpy's default).
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::INFINITY;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

struct Grower<'a> {
    x: ArrayView2<'a, f64>,
    rng: StdRng,
    max_depth: usize,
    features: Vec<usize>,
    left: Vec<u32>,
    right: Vec<u32>,
    feature: Vec<u32>,
    threshold: Vec<f64>,
    cover: Vec<u32>,
}

fn grow_tree(x: ArrayView2<'_, f64>, samples: usize, max_depth: usize, seed: u64) -> IsolationTree {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows = rand::seq::index::sample(&mut rng, x.nrows(), samples).into_vec();
    rows.sort_unstable(); // memory order; the tree does not depend on it beyond the seed
    let mut g = Grower {
        x,
        rng,
        max_depth,
        features: (0..x.ncols()).collect(),
        left: Vec::with_capacity(2 * samples),
        right: Vec::with_capacity(2 * samples),
        feature: Vec::with_capacity(2 * samples),
        threshold: Vec::with_capacity(2 * samples),
        cover: Vec::with_capacity(2 * samples),
    };
    g.grow(&mut rows, 0);
    IsolationTree::from_parts(&g.left, &g.right, &g.feature, &g.threshold, &g.cover)
        .expect("a grown tree is consistent")
}

impl Grower<'_> {
    fn push(&mut self, cover: usize) -> usize {
        self.left.push(0);
        self.right.push(0);
        self.feature.push(0);
        self.threshold.push(0.0);
        self.cover.push(cover as u32);
        self.left.len() - 1
    }

    fn grow(&mut self, rows: &mut [usize], depth: usize) -> usize {
        let node = self.push(rows.len());
        if depth >= self.max_depth || rows.len() <= 1 {
            return node;
        }
        // Draw features without replacement until one is not constant on these rows.
        let d = self.features.len();
        let mut split = None;
        for k in 0..d {
            let j = self.rng.random_range(k..d);
            self.features.swap(k, j);
            let f = self.features[k];
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &r in rows.iter() {
                let v = self.x[[r, f]];
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if hi > lo {
                let t = lo + self.rng.random::<f64>() * (hi - lo);
                // Rounding can land on hi; keep the right side non-empty.
                split = Some((f, if t < hi { t } else { lo }));
                break;
            }
        }
        let Some((f, t)) = split else {
            return node;
        };
        let mut i = 0;
        for j in 0..rows.len() {
            if self.x[[rows[j], f]] <= t {
                rows.swap(i, j);
                i += 1;
            }
        }
        let (l_rows, r_rows) = rows.split_at_mut(i);
        self.feature[node] = f as u32;
        self.threshold[node] = t;
        let l = self.grow(l_rows, depth + 1);
        let r = self.grow(r_rows, depth + 1);
        self.left[node] = l as u32;
        self.right[node] = r as u32;
        node
    }
}

impl IsolationForest {
    /// E[h(x)]: the mean path length over the trees.
    pub fn expected_path_length(&self, row: &[f64]) -> f64 {
        let sum: f64 = self.trees.iter().map(|t| t.path_length(row)).sum();
        sum / self.trees.len() as f64
    }

    /// Anomaly score in (0, 1): 2^(-E[h(x)] / c(samples_per_tree)).
    pub fn anomaly_score(&self, row: &[f64]) -> f64 {
        if row.len() != self.n_features {
            return f64::NAN;
        }
        let c = average_path_length(self.samples_per_tree);
        (2.0f64).powf(-self.expected_path_length(row) / c)
    }

    /// Scores every row, on `threads` threads (0 = the machine's cores).
    pub fn score_rows(&self, x: ArrayView2<'_, f64>, threads: usize) -> Vec<f64> {
        let threads = effective_threads(threads);
        let chunk = x.nrows().div_ceil(threads).max(1);
        let mut out = Vec::with_capacity(x.nrows());
        std::thread::scope(|scope| {
            let handles: Vec<_> = x
                .axis_chunks_iter(Axis(0), chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut buf = vec![0.0; part.ncols()];
                        part.axis_iter(Axis(0))
                            .map(|row| match row.as_slice() {
                                Some(s) => self.anomaly_score(s),
                                None => {
                                    buf.iter_mut().zip(row.iter()).for_each(|(b, v)| *b = *v);
                                    self.anomaly_score(&buf)
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                out.extend(h.join().expect("scoring does not panic"));
            }
        });
        out
    }

    /// Exact SHAP values of the expected path length E[h(x)] (what `shap.TreeExplainer` computes for
    /// scikit-learn's IsolationForest) and the base value E[E[h]] over the training data. The values sum
    /// to E[h(x)] - base. A short path means an anomaly, so anomalous features get negative values.
    pub fn shap_values(&self, row: &[f64]) -> (Vec<f64>, f64) {
        let mut phi = vec![0.0; self.n_features];
        if row.len() != self.n_features {
            return (phi, f64::NAN);
        }
        let scale = 1.0 / self.trees.len() as f64;
        let mut scratch = Scratch::default();
        let mut base = 0.0;
        for t in &self.trees {
            treeshap::tree_shap(t.view(), t.depth, row, scale, &mut phi, &mut scratch);
            base += t.values()[0] * scale;
        }
        (phi, base)
    }

    /// Checks a loaded forest: trees present, split features in range, finite threshold.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.trees.is_empty() || self.n_features == 0 || self.samples_per_tree < 2 {
            return Err(ModelError::Format(
                "isolation forest without trees, features or samples".into(),
            ));
        }
        for (i, t) in self.trees.iter().enumerate() {
            let (left, feature) = (t.left(), t.feature());
            if (0..t.n_nodes()).any(|n| left[n] != 0 && feature[n] as usize >= self.n_features) {
                return Err(ModelError::Format(format!(
                    "tree {i}: split on a feature >= {}",
                    self.n_features
                )));
            }
        }
        if self.threshold.is_nan() {
            return Err(ModelError::Format("isolation forest: NaN threshold".into()));
        }
        Ok(())
    }

    /// Serialized size of the model in bytes (JSON).
    pub fn file_size(&self) -> usize {
        serde_json::to_vec(self).map_or(0, |v| v.len())
    }
}

impl Model for IsolationForest {
    fn kind(&self) -> &'static str {
        "isolation_forest"
    }
    fn n_features(&self) -> usize {
        self.n_features
    }
    fn score(&self, row: &[f64]) -> f64 {
        self.anomaly_score(row)
    }
    fn threshold(&self) -> f64 {
        self.threshold
    }
    /// Isolation scores sit near 0.5 for ordinary rows (a path of average length) and approach 1 for
    /// isolated ones, so the evidence is the excess over 0.5, relative to the threshold's excess.
    fn threshold_ratio(&self, score: f64) -> f64 {
        let t = self.threshold;
        if !score.is_finite() {
            0.0
        } else if t > 0.5 {
            ((score - 0.5) / (t - 0.5)).max(0.0)
        } else if t > 0.0 {
            score / t
        } else {
            0.0
        }
    }
    /// SHAP values of the path length, negated: positive = shortens the path = more anomalous.
    fn explain(&self, row: &[f64]) -> Vec<f64> {
        if row.len() != self.n_features {
            return Vec::new();
        }
        self.shap_values(row).0.into_iter().map(|v| -v).collect()
    }
    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.trees.capacity() * std::mem::size_of::<IsolationTree>()
            + self.trees.iter().map(|t| t.heap_bytes()).sum::<usize>()
    }
}
