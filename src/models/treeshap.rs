//! Exact path-dependent TreeSHAP (Lundberg et al. 2018, "Consistent Individualized Feature Attribution
//! for Tree Ensembles", algorithm 2), as shap's C++ `tree_shap_recursive` computes it.
//!
//! The "missing" features of a coalition follow both children weighted by the training samples that
//! went each way (the node cover), so no background data set is needed and the result is exact.

/// One binary tree as flat node arrays; node 0 is the root, a node whose `left` is 0 is a leaf (the root
/// is never a child, so 0 is free as the "no child" mark).
#[derive(Clone, Copy, Debug)]
pub struct TreeView<'a> {
    pub left: &'a [u32],
    pub right: &'a [u32],
    pub feature: &'a [u32],
    pub threshold: &'a [f64],
    /// Training samples that reached each node.
    pub cover: &'a [f64],
    /// Output of each node: at a leaf the prediction, inside the cover-weighted mean of the leaves below.
    pub value: &'a [f64],
}

#[derive(Clone, Copy, Debug, Default)]
struct PathElement {
    feature: usize,
    zero_fraction: f64,
    one_fraction: f64,
    pweight: f64,
}

/// The root's path element carries no feature.
const NO_FEATURE: usize = usize::MAX;

/// Reusable scratch space: the unique paths of all depths of one tree walk.
#[derive(Debug, Default)]
pub struct Scratch {
    path: Vec<PathElement>,
}

impl Scratch {
    fn ensure(&mut self, max_depth: usize) {
        let need = (max_depth + 2) * (max_depth + 3) / 2;
        if self.path.len() < need {
            self.path.resize(need, PathElement::default());
        }
    }
}

/// Adds `scale` times the SHAP values of `x` for `tree` to `phi` (one slot per feature). The values
/// sum to `scale * (f(x) - value[0])`. `max_depth` bounds the depth of the tree (root = 0).
pub fn tree_shap(
    tree: TreeView<'_>,
    max_depth: usize,
    x: &[f64],
    scale: f64,
    phi: &mut [f64],
    scratch: &mut Scratch,
) {
    scratch.ensure(max_depth + 1);
    let mut walk = Walk {
        tree,
        x,
        phi,
        scale,
    };
    walk.recurse(&mut scratch.path, 0, 0, 1.0, 1.0, NO_FEATURE);
}

struct Walk<'a, 'b> {
    tree: TreeView<'a>,
    x: &'b [f64],
    phi: &'b mut [f64],
    scale: f64,
}

impl Walk<'_, '_> {
    /// `buf[..depth + 1]` is the parent's unique path; this node's path goes right after it.
    fn recurse(
        &mut self,
        buf: &mut [PathElement],
        node: usize,
        mut depth: usize,
        parent_zero: f64,
        parent_one: f64,
        parent_feature: usize,
    ) {
        let (parent, path) = buf.split_at_mut(depth + 1);
        path[..depth + 1].copy_from_slice(parent);
        extend(path, depth, parent_zero, parent_one, parent_feature);
        let t = self.tree;
        if t.left[node] == 0 {
            let v = t.value[node] * self.scale;
            for i in 1..=depth {
                let w = unwound_sum(path, depth, i);
                let el = path[i];
                if let Some(p) = self.phi.get_mut(el.feature) {
                    *p += w * (el.one_fraction - el.zero_fraction) * v;
                }
            }
            return;
        }
        let split = t.feature[node] as usize;
        let (l, r) = (t.left[node] as usize, t.right[node] as usize);
        let goes_left = self.x.get(split).is_some_and(|v| *v <= t.threshold[node]);
        let (hot, cold) = if goes_left { (l, r) } else { (r, l) };
        let w = t.cover[node];
        let hot_zero = t.cover[hot] / w;
        let cold_zero = t.cover[cold] / w;
        let (mut in_zero, mut in_one) = (1.0, 1.0);
        // A feature already on the path is undone here and redone with this node's fractions.
        if let Some(k) = (0..=depth).find(|&k| path[k].feature == split) {
            in_zero = path[k].zero_fraction;
            in_one = path[k].one_fraction;
            unwind(path, depth, k);
            depth -= 1;
        }
        self.recurse(path, hot, depth + 1, hot_zero * in_zero, in_one, split);
        self.recurse(path, cold, depth + 1, cold_zero * in_zero, 0.0, split);
    }
}

fn extend(path: &mut [PathElement], depth: usize, zero: f64, one: f64, feature: usize) {
    path[depth] = PathElement {
        feature,
        zero_fraction: zero,
        one_fraction: one,
        pweight: if depth == 0 { 1.0 } else { 0.0 },
    };
    let d1 = (depth + 1) as f64;
    for i in (0..depth).rev() {
        path[i + 1].pweight += one * path[i].pweight * (i + 1) as f64 / d1;
        path[i].pweight = zero * path[i].pweight * (depth - i) as f64 / d1;
    }
}

fn unwind(path: &mut [PathElement], depth: usize, index: usize) {
    let one = path[index].one_fraction;
    let zero = path[index].zero_fraction;
    let mut next_one = path[depth].pweight;
    let d1 = (depth + 1) as f64;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = path[i].pweight;
            path[i].pweight = next_one * d1 / ((i + 1) as f64 * one);
            next_one = tmp - path[i].pweight * zero * (depth - i) as f64 / d1;
        } else {
            path[i].pweight = path[i].pweight * d1 / (zero * (depth - i) as f64);
        }
    }
    for i in index..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero_fraction = path[i + 1].zero_fraction;
        path[i].one_fraction = path[i + 1].one_fraction;
    }
}

fn unwound_sum(path: &[PathElement], depth: usize, index: usize) -> f64 {
    let one = path[index].one_fraction;
    let zero = path[index].zero_fraction;
    let mut next_one = path[depth].pweight;
    let mut total = 0.0;
    if one != 0.0 {
        for i in (0..depth).rev() {
            let tmp = next_one / ((i + 1) as f64 * one);
            total += tmp;
            next_one = path[i].pweight - tmp * zero * (depth - i) as f64;
        }
    } else {
        for i in (0..depth).rev() {
            total += path[i].pweight / (zero * (depth - i) as f64);
        }
    }
    total * (depth + 1) as f64
}

// --- The same values, leaf by leaf, by quadrature --------------------------------------------------
//
// For a leaf v whose path tests the distinct features P (d of them), path-dependent TreeSHAP credits
// feature i in P with
//
//   value(v) * (o_i - z_i) * sum_{S in P\{i}} |S|! (d-|S|-1)! / d! * prod_{j in S} o_j * prod_{j not in S, j != i} z_j
//
// where z_j is the product of the cover fractions of j's splits on the path and o_j is 1 when x takes
// every one of them, else 0 (algorithm 2 builds exactly these "zero" and "one" fractions). The weight
// |S|! (d-|S|-1)! / d! is the Beta integral of t^|S| (1-t)^(d-1-|S|) over [0, 1], so the sum is
//
//   integral over [0, 1] of prod_{j != i} (z_j (1 - t) + o_j t) dt,
//
// a polynomial of degree d - 1 in t, which Gauss-Legendre quadrature with ceil(d / 2) points integrates
// exactly. Per leaf that is O(d * d/2) multiplications with no division (the products leaving out one
// factor come from prefix and suffix products), against algorithm 2's O(d^2) divisions plus the
// path extension and unwinding at every node. Same result to rounding (a test compares the two on
// random forests; algorithm 2 is the one checked against Python's shap).

/// Gauss-Legendre points and weights on [0, 1] for 1..=MAX_POINTS points.
const MAX_POINTS: usize = 16;

fn gauss_legendre_01() -> &'static [(Vec<f64>, Vec<f64>)] {
    static TABLE: std::sync::OnceLock<Vec<(Vec<f64>, Vec<f64>)>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (1..=MAX_POINTS).map(gauss_legendre).collect())
}

/// Roots of the Legendre polynomial P_m by Newton's method (the classic Numerical Recipes routine),
/// mapped to [0, 1] with weights summing to 1.
fn gauss_legendre(m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut nodes = vec![0.0; m];
    let mut weights = vec![0.0; m];
    for i in 0..m {
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (m as f64 + 0.5)).cos();
        let mut pp = 1.0;
        for _ in 0..100 {
            let (mut p1, mut p2) = (1.0, 0.0);
            for j in 1..=m {
                let p3 = p2;
                p2 = p1;
                p1 = ((2 * j - 1) as f64 * z * p2 - (j - 1) as f64 * p3) / j as f64;
            }
            pp = m as f64 * (z * p1 - p2) / (z * z - 1.0);
            let z1 = z;
            z = z1 - p1 / pp;
            if (z - z1).abs() < 1e-15 {
                break;
            }
        }
        nodes[i] = (1.0 - z) / 2.0;
        weights[i] = 1.0 / ((1.0 - z * z) * pp * pp);
    }
    (nodes, weights)
}

/// Reusable buffers of [`tree_shap_by_leaf`].
#[derive(Debug, Default)]
pub struct LeafScratch {
    /// Per feature: product of cover fractions and of "x goes this way" on the current path, and how
    /// many splits of the path test it.
    z: Vec<f64>,
    o: Vec<f64>,
    count: Vec<u32>,
    /// Distinct features on the current path, in order of first appearance.
    on_path: Vec<usize>,
    /// Per distinct feature and quadrature point: the factor, and the prefix products.
    factor: Vec<f64>,
    prefix: Vec<f64>,
}

/// Adds `scale` times the SHAP values of `x` for `tree` to `phi`, like [`tree_shap`] (same values up to
/// rounding), leaf by leaf. Falls back to [`tree_shap`] for a path with more than 2 * MAX_POINTS
/// distinct features.
pub fn tree_shap_by_leaf(
    tree: TreeView<'_>,
    max_depth: usize,
    x: &[f64],
    scale: f64,
    phi: &mut [f64],
    scratch: &mut LeafScratch,
) {
    if max_depth.min(phi.len()) > 2 * MAX_POINTS {
        let mut s = Scratch::default();
        return tree_shap(tree, max_depth, x, scale, phi, &mut s);
    }
    let n = phi.len();
    scratch.z.clear();
    scratch.z.resize(n, 1.0);
    scratch.o.clear();
    scratch.o.resize(n, 1.0);
    scratch.count.clear();
    scratch.count.resize(n, 0);
    scratch.on_path.clear();
    let mut walk = LeafWalk {
        tree,
        x,
        phi,
        scale,
        s: scratch,
        table: gauss_legendre_01(),
    };
    walk.visit(0);
}

struct LeafWalk<'a, 'b> {
    tree: TreeView<'a>,
    x: &'b [f64],
    phi: &'b mut [f64],
    scale: f64,
    s: &'b mut LeafScratch,
    table: &'static [(Vec<f64>, Vec<f64>)],
}

impl LeafWalk<'_, '_> {
    fn visit(&mut self, node: usize) {
        let t = self.tree;
        if t.left[node] == 0 {
            return self.leaf(t.value[node] * self.scale);
        }
        // Split features are checked against the feature count when a model is fitted or loaded.
        let f = t.feature[node] as usize;
        let goes_left = self.x.get(f).is_some_and(|v| *v <= t.threshold[node]);
        let w = t.cover[node];
        for (child, taken) in [
            (t.left[node] as usize, goes_left),
            (t.right[node] as usize, !goes_left),
        ] {
            let ratio = t.cover[child] / w;
            let s = &mut *self.s;
            let saved = (s.z[f], s.o[f]);
            if s.count[f] == 0 {
                s.on_path.push(f);
                s.z[f] = ratio;
                s.o[f] = if taken { 1.0 } else { 0.0 };
            } else {
                s.z[f] *= ratio;
                if !taken {
                    s.o[f] = 0.0;
                }
            }
            s.count[f] += 1;
            self.visit(child);
            let s = &mut *self.s;
            s.count[f] -= 1;
            (s.z[f], s.o[f]) = saved;
            if s.count[f] == 0 {
                s.on_path.pop();
            }
        }
    }

    fn leaf(&mut self, value: f64) {
        let s = &mut *self.s;
        let d = s.on_path.len();
        if d == 0 {
            return;
        }
        let m = d.div_ceil(2);
        let (nodes, weights) = &self.table[m - 1];
        // factor[j * m + q] = z_j (1 - t_q) + o_j t_q; prefix[j * m + q] = prod of factors before j.
        s.factor.clear();
        s.prefix.clear();
        s.factor.resize(d * m, 0.0);
        s.prefix.resize(d * m, 0.0);
        for (j, &f) in s.on_path.iter().enumerate() {
            let (z, o) = (s.z[f], s.o[f]);
            for q in 0..m {
                let tq = nodes[q];
                s.factor[j * m + q] = z * (1.0 - tq) + o * tq;
            }
        }
        for q in 0..m {
            let mut acc = 1.0;
            for j in 0..d {
                s.prefix[j * m + q] = acc;
                acc *= s.factor[j * m + q];
            }
        }
        // Walk back with the suffix products: the integral leaving out feature j.
        let mut suffix = [1.0f64; MAX_POINTS];
        for j in (0..d).rev() {
            let f = s.on_path[j];
            let mut integral = 0.0;
            for q in 0..m {
                integral += weights[q] * s.prefix[j * m + q] * suffix[q];
                suffix[q] *= s.factor[j * m + q];
            }
            self.phi[f] += value * (s.o[f] - s.z[f]) * integral;
        }
    }
}
