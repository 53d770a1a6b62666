//! Exact path-dependent TreeSHAP (the values of Lundberg et al. 2018, "Consistent Individualized
//! Feature Attribution for Tree Ensembles", algorithm 2, which shap's C++ `tree_shap_recursive`
//! computes), evaluated the way Linear TreeSHAP (Yu et al. 2022) does: as an integral of a polynomial,
//! computed exactly by Gauss-Legendre quadrature.
//!
//! The "missing" features of a coalition follow both children weighted by the training samples that
//! went each way (the node cover), so no background data set is needed and the result is exact.
//!
//! Why not the textbook recursion: it extends and unwinds a path of permutation weights at every node
//! and leaf, O(depth^2) with a division per step at each of the ~256 leaves of an isolation tree, about
//! 1.4 ms per row for a default forest, which made explanations the largest cost of an alert. Here a
//! leaf costs O(d * ceil(d / 2)) multiply-adds for its d distinct path features. The maths: a leaf with
//! value `v` whose path splits on the distinct features U (|U| = d) contributes, for each i in U,
//!
//! ```text
//! phi_i += v * (o_i - z_i) * sum_{S in U\{i}} |S|! (d-1-|S|)! / d! * prod_{j in S} o_j * prod_{j in U\{i}\S} z_j
//! ```
//!
//! where `z_j` is the product of the cover fractions of the path's splits on `j` (the chance a reading
//! without feature j follows the path) and `o_j` is 1 when `x` follows all of them, else 0 (both merged
//! over repeated splits on the same feature, as the recursion merges them). The Shapley weight is a
//! Beta integral, |S|! (d-1-|S|)! / d! = integral_0^1 t^|S| (1-t)^(d-1-|S|) dt, so the inner sum is
//!
//! ```text
//! integral_0^1 prod_{j in U\{i}} (z_j (1 - t) + o_j t) dt
//! ```
//!
//! the integral of a polynomial of degree d - 1, which an n-point Gauss-Legendre rule integrates
//! exactly when 2n - 1 >= d - 1. The products leaving out one factor come from prefix and suffix
//! products (no division, so no trouble with small cover fractions).

use std::sync::OnceLock;

/// One binary tree as flat node arrays; node 0 is the root, a node whose `left` is 0 is a leaf (the root
/// is never a child, so 0 is free as the "no child" mark).
#[derive(Clone, Copy, Debug)]
pub struct TreeView<'a> {
    pub left: &'a [u16],
    pub right: &'a [u16],
    pub feature: &'a [u16],
    pub threshold: &'a [f64],
    /// Training samples that reached each node.
    pub cover: &'a [u16],
    /// Output of each node: at a leaf the prediction, inside the cover-weighted mean of the leaves below.
    pub value: &'a [f64],
}

/// One distinct feature on the current root-to-node path, its splits merged.
#[derive(Clone, Copy, Debug, Default)]
struct PathFeature {
    feature: usize,
    /// Product of the cover fractions of the path's splits on this feature.
    zero: f64,
    /// 1 when the row follows every split of the path on this feature, else 0.
    one: f64,
}

/// Reusable scratch space for one tree walk at a time.
#[derive(Debug, Default)]
pub struct Scratch {
    path: Vec<PathFeature>,
    /// Per path feature: its factor at the current quadrature node, the product of the factors before
    /// it, and the accumulated integral of the product of all the others.
    factor: Vec<f64>,
    prefix: Vec<f64>,
    integral: Vec<f64>,
}

impl Scratch {
    fn ensure(&mut self, max_depth: usize) {
        let need = max_depth + 1;
        if self.path.len() < need {
            self.path.resize(need, PathFeature::default());
            self.factor.resize(need, 0.0);
            self.prefix.resize(need, 0.0);
            self.integral.resize(need, 0.0);
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
        s: scratch,
    };
    walk.recurse(0, 0);
}

struct Walk<'a, 'b> {
    tree: TreeView<'a>,
    x: &'b [f64],
    phi: &'b mut [f64],
    scale: f64,
    s: &'b mut Scratch,
}

impl Walk<'_, '_> {
    /// `self.s.path[..len]` holds the distinct features of the path from the root to `node`.
    fn recurse(&mut self, node: usize, len: usize) {
        let t = self.tree;
        if t.left[node] == 0 {
            self.leaf(t.value[node] * self.scale, len);
            return;
        }
        let split = t.feature[node] as usize;
        let (l, r) = (t.left[node] as usize, t.right[node] as usize);
        let goes_left = self.x.get(split).is_some_and(|v| *v <= t.threshold[node]);
        let (hot, cold) = if goes_left { (l, r) } else { (r, l) };
        let w = f64::from(t.cover[node]);
        let hot_zero = f64::from(t.cover[hot]) / w;
        let cold_zero = f64::from(t.cover[cold]) / w;
        if let Some(k) = self.s.path[..len].iter().position(|p| p.feature == split) {
            // A feature already on the path: its splits merge (fractions multiply).
            let before = self.s.path[k];
            self.s.path[k].zero = before.zero * hot_zero;
            self.recurse(hot, len);
            self.s.path[k] = PathFeature {
                feature: split,
                zero: before.zero * cold_zero,
                one: 0.0,
            };
            self.recurse(cold, len);
            self.s.path[k] = before;
        } else {
            // The scratch is sized for the tree's depth; a deeper (malformed) tree grows it.
            if self.s.path.len() <= len {
                self.s.ensure(len + 1);
            }
            self.s.path[len] = PathFeature {
                feature: split,
                zero: hot_zero,
                one: 1.0,
            };
            self.recurse(hot, len + 1);
            self.s.path[len] = PathFeature {
                feature: split,
                zero: cold_zero,
                one: 0.0,
            };
            self.recurse(cold, len + 1);
        }
    }

    fn leaf(&mut self, value: f64, d: usize) {
        if d == 0 || value == 0.0 {
            return;
        }
        let rule = gauss_legendre(d.div_ceil(2));
        let s = &mut *self.s;
        let path = &s.path[..d];
        s.integral[..d].fill(0.0);
        for (&t, &w) in rule.nodes.iter().zip(&rule.weights) {
            let mut product = 1.0;
            for (j, p) in path.iter().enumerate() {
                let f = p.zero + (p.one - p.zero) * t;
                s.factor[j] = f;
                s.prefix[j] = product;
                product *= f;
            }
            let mut suffix = w;
            for j in (0..d).rev() {
                s.integral[j] += s.prefix[j] * suffix;
                suffix *= s.factor[j];
            }
        }
        for (p, integral) in path.iter().zip(&s.integral[..d]) {
            if let Some(slot) = self.phi.get_mut(p.feature) {
                *slot += value * (p.one - p.zero) * integral;
            }
        }
    }
}

/// An n-point Gauss-Legendre rule on [0, 1]: exact for polynomials of degree up to 2n - 1.
#[derive(Debug)]
struct Rule {
    nodes: Vec<f64>,
    weights: Vec<f64>,
}

/// Rules for n = 1..=MAX_CACHED_POINTS are computed once (paths of up to 128 distinct features).
const MAX_CACHED_POINTS: usize = 64;

fn gauss_legendre(n: usize) -> &'static Rule {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    let rules = RULES.get_or_init(|| (1..=MAX_CACHED_POINTS).map(legendre_rule).collect());
    match rules.get(n.max(1) - 1) {
        Some(rule) => rule,
        None => {
            // Only a tree splitting on more than 128 distinct features on one path gets here; computed
            // once per size and kept.
            static LARGE: OnceLock<std::sync::Mutex<Vec<&'static Rule>>> = OnceLock::new();
            let mut large = LARGE
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(rule) = large.iter().find(|r| r.nodes.len() == n) {
                return rule;
            }
            let rule: &'static Rule = Box::leak(Box::new(legendre_rule(n)));
            large.push(rule);
            rule
        }
    }
}

/// Nodes and weights by Newton's method on the Legendre polynomial P_n (the classic `gauleg`), mapped
/// from [-1, 1] to [0, 1].
fn legendre_rule(n: usize) -> Rule {
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    let nf = n as f64;
    for i in 0..n.div_ceil(2) {
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (nf + 0.5)).cos();
        let mut derivative;
        loop {
            let (mut p1, mut p2) = (1.0, 0.0);
            for j in 1..=n {
                let p3 = p2;
                p2 = p1;
                let jf = j as f64;
                p1 = ((2.0 * jf - 1.0) * z * p2 - (jf - 1.0) * p3) / jf;
            }
            derivative = nf * (z * p1 - p2) / (z * z - 1.0);
            let previous = z;
            z = previous - p1 / derivative;
            if (z - previous).abs() <= 1e-15 {
                break;
            }
        }
        let w = 2.0 / ((1.0 - z * z) * derivative * derivative);
        // On [0, 1]: t = (1 + x) / 2, weight halved.
        nodes[i] = (1.0 - z) / 2.0;
        nodes[n - 1 - i] = (1.0 + z) / 2.0;
        weights[i] = w / 2.0;
        weights[n - 1 - i] = w / 2.0;
    }
    Rule { nodes, weights }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, Rng, SeedableRng};

    #[test]
    fn gauss_legendre_rules_integrate_polynomials_of_degree_2n_minus_1_exactly() {
        for n in 1..=12 {
            let rule = gauss_legendre(n);
            assert!((rule.weights.iter().sum::<f64>() - 1.0).abs() < 1e-14);
            for k in 0..2 * n {
                let got: f64 = rule
                    .nodes
                    .iter()
                    .zip(&rule.weights)
                    .map(|(t, w)| w * t.powi(k as i32))
                    .sum();
                let want = 1.0 / (k as f64 + 1.0);
                assert!(
                    (got - want).abs() < 1e-14,
                    "n {n} degree {k}: {got} vs {want}"
                );
            }
        }
        assert_eq!(gauss_legendre(100).nodes.len(), 100);
    }

    /// A random tree of the given depth over `features` features, as owned arrays.
    struct OwnedTree {
        left: Vec<u16>,
        right: Vec<u16>,
        feature: Vec<u16>,
        threshold: Vec<f64>,
        cover: Vec<u16>,
        value: Vec<f64>,
    }

    impl OwnedTree {
        fn random(rng: &mut SmallRng, depth: usize, features: usize) -> OwnedTree {
            let mut t = OwnedTree {
                left: vec![],
                right: vec![],
                feature: vec![],
                threshold: vec![],
                cover: vec![],
                value: vec![],
            };
            let cover = rng.random_range(200..300);
            t.grow(rng, depth, features, cover);
            t
        }

        fn grow(&mut self, rng: &mut SmallRng, depth: usize, features: usize, cover: u16) -> usize {
            let id = self.left.len();
            self.left.push(0);
            self.right.push(0);
            self.feature.push(0);
            self.threshold.push(0.0);
            self.cover.push(cover);
            self.value.push(0.0);
            if depth == 0 || cover < 2 || (depth < 3 && rng.random_bool(0.3)) {
                self.value[id] = rng.random_range(-3.0..5.0);
                return id;
            }
            let share = rng.random_range(1..cover);
            let l = self.grow(rng, depth - 1, features, share);
            let r = self.grow(rng, depth - 1, features, cover - share);
            self.left[id] = l as u16;
            self.right[id] = r as u16;
            // Few features, so paths repeat them (the merge case).
            self.feature[id] = rng.random_range(0..features) as u16;
            self.threshold[id] = rng.random_range(-1.0..1.0);
            let c = |n: usize| f64::from(self.cover[n]);
            self.value[id] = (self.value[l] * c(l) + self.value[r] * c(r)) / f64::from(cover);
            id
        }

        fn view(&self) -> TreeView<'_> {
            TreeView {
                left: &self.left,
                right: &self.right,
                feature: &self.feature,
                threshold: &self.threshold,
                cover: &self.cover,
                value: &self.value,
            }
        }

        /// E[f(x) | x_S] with the path-dependent (cover-weighted) treatment of features outside S.
        fn conditional(&self, node: usize, x: &[f64], in_s: &[bool]) -> f64 {
            if self.left[node] == 0 {
                return self.value[node];
            }
            let (l, r) = (self.left[node] as usize, self.right[node] as usize);
            let j = self.feature[node] as usize;
            if in_s[j] {
                let next = if x[j] <= self.threshold[node] { l } else { r };
                self.conditional(next, x, in_s)
            } else {
                (f64::from(self.cover[l]) * self.conditional(l, x, in_s)
                    + f64::from(self.cover[r]) * self.conditional(r, x, in_s))
                    / f64::from(self.cover[node])
            }
        }
    }

    /// Shapley values by their definition: every coalition of the m features, weighted.
    fn brute_force(tree: &OwnedTree, x: &[f64], m: usize) -> Vec<f64> {
        let fact = |k: usize| (1..=k).map(|v| v as f64).product::<f64>();
        let mut phi = vec![0.0; m];
        for mask in 0u32..(1 << m) {
            let in_s: Vec<bool> = (0..m).map(|j| mask & (1 << j) != 0).collect();
            let size = in_s.iter().filter(|b| **b).count();
            let base = tree.conditional(0, x, &in_s);
            for i in (0..m).filter(|i| !in_s[*i]) {
                let mut with = in_s.clone();
                with[i] = true;
                let w = fact(size) * fact(m - size - 1) / fact(m);
                phi[i] += w * (tree.conditional(0, x, &with) - base);
            }
        }
        phi
    }

    #[test]
    fn matches_the_shapley_definition_on_random_trees_with_repeated_features() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut scratch = Scratch::default();
        for case in 0..60 {
            let m = rng.random_range(1..=7);
            let depth = rng.random_range(1..=9);
            let tree = OwnedTree::random(&mut rng, depth, m);
            let x: Vec<f64> = (0..m).map(|_| rng.random_range(-1.2..1.2)).collect();
            let want = brute_force(&tree, &x, m);
            let mut got = vec![0.0; m];
            tree_shap(tree.view(), depth, &x, 1.0, &mut got, &mut scratch);
            for j in 0..m {
                assert!(
                    (got[j] - want[j]).abs() < 1e-10 * (1.0 + want[j].abs()),
                    "case {case} (m {m}, depth {depth}) feature {j}: {} vs {}",
                    got[j],
                    want[j]
                );
            }
            // Efficiency: the values sum to f(x) - E[f].
            let all = vec![true; m];
            let fx = tree.conditional(0, &x, &all);
            assert!((got.iter().sum::<f64>() - (fx - tree.value[0])).abs() < 1e-9);
        }
    }

    #[test]
    fn a_missing_feature_value_goes_right_and_a_stump_attributes_to_its_feature() {
        let tree = OwnedTree {
            left: vec![1, 0, 0],
            right: vec![2, 0, 0],
            feature: vec![1, 0, 0],
            threshold: vec![0.5, 0.0, 0.0],
            cover: vec![10, 4, 6],
            value: vec![0.4 * 1.0 + 0.6 * 3.0, 1.0, 3.0],
        };
        let mut phi = vec![0.0; 2];
        let mut scratch = Scratch::default();
        tree_shap(tree.view(), 1, &[9.0, 0.0], 2.0, &mut phi, &mut scratch);
        // x goes left: f(x) = 1, E[f] = 2.2, everything on feature 1, scaled by 2.
        assert_eq!(phi[0], 0.0);
        assert!((phi[1] - 2.0 * (1.0 - 2.2)).abs() < 1e-12);
        let mut phi = vec![0.0; 2];
        tree_shap(tree.view(), 1, &[9.0], 1.0, &mut phi, &mut scratch);
        assert!((phi[1] - (3.0 - 2.2)).abs() < 1e-12, "{phi:?}");
    }
}
