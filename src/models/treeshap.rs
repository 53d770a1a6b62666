//! Exact path-dependent TreeSHAP (Lundberg et al. 2018, "Consistent Individualized Feature Attribution
//! for Tree Ensembles", algorithm 2), as shap's C++ `tree_shap_recursive` computes it.
//!
//! The "missing" features of a coalition follow both children weighted by the training samples that
//! went each way (the node cover), so no background data set is needed and the result is exact.

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
        let w = f64::from(t.cover[node]);
        let hot_zero = f64::from(t.cover[hot]) / w;
        let cold_zero = f64::from(t.cover[cold]) / w;
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
