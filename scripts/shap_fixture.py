#!/usr/bin/env python3
"""Reference SHAP values for the Rust TreeSHAP test (tests/fixtures/iforest_shap/expected.json).

Reads the Isolation Forest our Rust code exported (forest.json) and the rows to explain (rows.json),
builds shap's custom tree model the way shap itself treats scikit-learn's IsolationForest (node value =
leaf depth + c(leaf samples), each tree scaled by 1/n_trees so the output is the expected path length,
node_sample_weight = training samples reaching the node) and writes shap.TreeExplainer's values.

Regenerate (only when the fixture inputs change; CI does not run Python for this):
    cargo test --lib models::tests::write_shap_fixture_inputs -- --ignored
    pip install shap
    python3 scripts/shap_fixture.py
"""
import json
import math
import pathlib

import numpy as np
import shap

DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "iforest_shap"


def c(n):
    """Average path length of an unsuccessful BST search (scikit-learn's _average_path_length)."""
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + np.euler_gamma) - 2.0 * (n - 1.0) / n


def tree_dict(tree, scaling):
    left = np.array(tree["left"], dtype=np.int64)
    right = np.array(tree["right"], dtype=np.int64)
    cover = np.array(tree["cover"], dtype=np.float64)
    n = len(left)
    is_leaf = left == 0
    depth = np.zeros(n)
    for i in range(n):  # pre-order: parents come first
        if not is_leaf[i]:
            depth[left[i]] = depth[i] + 1
            depth[right[i]] = depth[i] + 1
    values = np.zeros(n)
    for i in reversed(range(n)):  # children come after parents
        if is_leaf[i]:
            values[i] = depth[i] + c(int(cover[i]))
        else:
            values[i] = (values[left[i]] * cover[left[i]] + values[right[i]] * cover[right[i]]) / cover[i]
    features = np.array(tree["feature"], dtype=np.int64)
    return {
        "children_left": np.where(is_leaf, -1, left),
        "children_right": np.where(is_leaf, -1, right),
        "children_default": np.where(is_leaf, -1, left),
        "features": np.where(is_leaf, -2, features),
        "thresholds": np.array(tree["threshold"], dtype=np.float64),
        "values": (values * scaling).reshape(-1, 1),
        "node_sample_weight": cover,
    }


def main():
    forest = json.loads((DIR / "forest.json").read_text())
    rows = np.array(json.loads((DIR / "rows.json").read_text())["rows"], dtype=np.float64)
    scaling = 1.0 / len(forest["trees"])
    model = {
        "trees": [tree_dict(t, scaling) for t in forest["trees"]],
        "input_dtype": np.float64,
        "internal_dtype": np.float64,
        "tree_output": "raw_value",
        "objective": "squared_error",
    }
    explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
    values = explainer.shap_values(rows, check_additivity=True)
    expected = float(np.ravel(explainer.expected_value)[0])
    out = {
        "shap_version": shap.__version__,
        "expected_value": expected,
        "shap_values": np.asarray(values).tolist(),
    }
    (DIR / "expected.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(values)} rows, expected value {expected:.6f} (shap {shap.__version__})")


if __name__ == "__main__":
    main()
