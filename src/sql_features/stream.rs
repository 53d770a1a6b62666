//! Per-reading evaluation of a compiled feature set, with per-thing window state.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;

use super::compile::{Agg, Arith, Cmp, Func, Node, Program};

/// Evaluates one feature set reading by reading; one [`ThingWindows`] per thing holds its windows.
#[derive(Clone, Debug)]
pub struct StreamEvaluator {
    program: Arc<Program>,
}

/// The window state of one thing (one ring buffer per window function).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ThingWindows {
    rings: Vec<VecDeque<Option<f64>>>,
    accs: Vec<Acc>,
    window_values: Vec<Option<f64>>,
}

impl StreamEvaluator {
    pub(crate) fn new(program: Arc<Program>) -> StreamEvaluator {
        StreamEvaluator { program }
    }

    /// Input sensor columns, in the order [`StreamEvaluator::evaluate`] takes them.
    pub fn inputs(&self) -> &[String] {
        &self.program.inputs
    }

    /// Output feature names, in the order [`StreamEvaluator::evaluate`] writes them.
    pub fn outputs(&self) -> &[String] {
        &self.program.outputs
    }

    /// Checks that deserialised window state (a state checkpoint) fits this feature set.
    pub fn check_thing(&self, state: &ThingWindows) -> Result<(), String> {
        let n = self.program.windows.len();
        let shape_ok = state.rings.len() == n
            && state.accs.len() == n
            && state.window_values.len() == n
            && state
                .rings
                .iter()
                .zip(&self.program.windows)
                .all(|(r, w)| r.len() <= w.rows + 1);
        if !shape_ok {
            return Err(format!(
                "SQL window state does not fit the feature set's {n} windows"
            ));
        }
        Ok(())
    }

    /// Empty window state for a new thing.
    pub fn new_thing(&self) -> ThingWindows {
        ThingWindows {
            rings: self
                .program
                .windows
                .iter()
                .map(|w| VecDeque::with_capacity(w.rows + 1))
                .collect(),
            accs: vec![Acc::default(); self.program.windows.len()],
            window_values: vec![None; self.program.windows.len()],
        }
    }

    /// Evaluates the next reading of a thing (readings in ts order). `inputs[i]` is the value of
    /// `inputs()[i]` (`None` = missing / NULL); `out[j]` receives `outputs()[j]`.
    pub fn evaluate(
        &self,
        state: &mut ThingWindows,
        inputs: &[Option<f64>],
        out: &mut [Option<f64>],
    ) {
        for (k, w) in self.program.windows.iter().enumerate() {
            let v = eval(&w.arg, inputs, &state.window_values);
            state.window_values[k] =
                advance(w.agg, &mut state.rings[k], &mut state.accs[k], w.rows, v);
        }
        for (o, e) in out.iter_mut().zip(&self.program.exprs) {
            *o = eval(e, inputs, &state.window_values);
        }
    }
}

/// Running state of the sum-based aggregates (sum, avg, var, stddev).
///
/// It reproduces DataFusion's sliding accumulators operation by operation: for each row the new value is
/// added first, then the value leaving the frame is retracted (`SlidingSumAccumulator`, `AvgAccumulator`,
/// `VarianceAccumulator`'s Welford update and retraction). The floating-point results are therefore the
/// ones DataFusion computes over history, also in windows of identical values, where an exact variance
/// (0) would differ from DataFusion's retracted Welford state (not exactly 0) and the square root
/// magnifies the difference.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Acc {
    count: u64,
    sum: f64,
    /// Avg only: a value has been seen (DataFusion's `Option` sum).
    has_sum: bool,
    mean: f64,
    m2: f64,
}

impl Acc {
    fn update(&mut self, agg: Agg, x: f64) {
        match agg {
            Agg::Sum => {
                self.count += 1;
                self.sum += x;
            }
            Agg::Avg => {
                self.count += 1;
                if !self.has_sum {
                    self.has_sum = true;
                    self.sum = 0.0;
                }
                self.sum += x;
            }
            _ => {
                let new_count = self.count + 1;
                let delta1 = x - self.mean;
                let new_mean = delta1 / new_count as f64 + self.mean;
                let delta2 = x - new_mean;
                self.m2 += delta1 * delta2;
                self.count = new_count;
                self.mean = new_mean;
            }
        }
    }

    fn retract(&mut self, agg: Agg, x: f64) {
        match agg {
            Agg::Sum | Agg::Avg => {
                self.count -= 1;
                self.sum -= x;
            }
            _ => {
                let new_count = self.count - 1;
                let delta1 = self.mean - x;
                let new_mean = delta1 / new_count as f64 + self.mean;
                let delta2 = new_mean - x;
                self.m2 -= delta1 * delta2;
                self.count = new_count;
                self.mean = new_mean;
            }
        }
    }

    fn evaluate(&self, agg: Agg) -> Option<f64> {
        match agg {
            Agg::Sum => (self.count != 0).then_some(self.sum),
            Agg::Avg => self.has_sum.then(|| self.sum / self.count as f64),
            _ => {
                let sample = matches!(agg, Agg::VarSamp | Agg::StddevSamp);
                let var = match self.count {
                    0 => None,
                    1 => (!sample).then_some(0.0),
                    n => Some(self.m2 / (if sample { n - 1 } else { n }) as f64),
                };
                if matches!(agg, Agg::StddevSamp | Agg::StddevPop) {
                    var.map(f64::sqrt)
                } else {
                    var
                }
            }
        }
    }
}

/// Advances window `agg` by the new value `v` (pushed into `ring`, at most `rows` long) and returns
/// its value. Count, min and max are recomputed over the ring (exact, as DataFusion's are); the
/// sum-based aggregates follow DataFusion's accumulator arithmetic (see [`Acc`]).
fn advance(
    agg: Agg,
    ring: &mut VecDeque<Option<f64>>,
    acc: &mut Acc,
    rows: usize,
    v: Option<f64>,
) -> Option<f64> {
    ring.push_back(v);
    let leaving = if ring.len() > rows {
        ring.pop_front().flatten()
    } else {
        None
    };
    if let Agg::Lag { offset, default } = agg {
        // `rows` = offset + 1: the value `offset` rows back exists once the ring is full.
        return if ring.len() == rows {
            ring[ring.len() - 1 - offset]
        } else {
            default
        };
    }
    let values = ring.iter().flatten().copied();
    match agg {
        Agg::Count => Some(values.count() as f64),
        Agg::Min => values.reduce(|a, b| {
            if b.total_cmp(&a) == Ordering::Less {
                b
            } else {
                a
            }
        }),
        Agg::Max => values.reduce(|a, b| {
            if b.total_cmp(&a) == Ordering::Greater {
                b
            } else {
                a
            }
        }),
        _ => {
            if let Some(x) = v {
                acc.update(agg, x);
            }
            if let Some(x) = leaving {
                acc.retract(agg, x);
            }
            acc.evaluate(agg)
        }
    }
}

fn truth(v: Option<f64>) -> Option<bool> {
    v.map(|x| x != 0.0)
}

fn from_bool(b: Option<bool>) -> Option<f64> {
    b.map(|b| if b { 1.0 } else { 0.0 })
}

fn eval(node: &Node, inputs: &[Option<f64>], windows: &[Option<f64>]) -> Option<f64> {
    let ev = |n: &Node| eval(n, inputs, windows);
    match node {
        Node::Input(i) => inputs[*i],
        Node::Window(k) => windows[*k],
        Node::Const(v) => *v,
        Node::Neg(x) => ev(x).map(|v| -v),
        Node::Not(x) => from_bool(truth(ev(x)).map(|b| !b)),
        Node::IsNull(x, want_null) => Some(if ev(x).is_none() == *want_null {
            1.0
        } else {
            0.0
        }),
        Node::Arith(op, integer, l, r) => {
            let (a, b) = (ev(l)?, ev(r)?);
            Some(match op {
                Arith::Add => a + b,
                Arith::Sub => a - b,
                Arith::Mul => a * b,
                // Integer division truncates; by zero it is an error in DataFusion, NULL here.
                Arith::Div if *integer => {
                    if b == 0.0 {
                        return None;
                    }
                    (a / b).trunc()
                }
                Arith::Div => a / b,
                Arith::Rem if *integer && b == 0.0 => return None,
                Arith::Rem => a % b,
            })
        }
        Node::Cmp(op, l, r) => {
            let (a, b) = (ev(l)?, ev(r)?);
            // Arrow compares floats by total order (NaN is largest, -0 < +0).
            let o = a.total_cmp(&b);
            from_bool(Some(match op {
                Cmp::Eq => o == Ordering::Equal,
                Cmp::NotEq => o != Ordering::Equal,
                Cmp::Lt => o == Ordering::Less,
                Cmp::LtEq => o != Ordering::Greater,
                Cmp::Gt => o == Ordering::Greater,
                Cmp::GtEq => o != Ordering::Less,
            }))
        }
        Node::And(l, r) => from_bool(match (truth(ev(l)), truth(ev(r))) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }),
        Node::Or(l, r) => from_bool(match (truth(ev(l)), truth(ev(r))) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        }),
        Node::Case {
            operand,
            whens,
            otherwise,
        } => {
            let base = operand.as_ref().map(|o| ev(o));
            for (w, t) in whens {
                let hit = match base {
                    // `CASE x WHEN v`: x = v, never true for NULLs.
                    Some(b) => match (b, ev(w)) {
                        (Some(b), Some(v)) => b.total_cmp(&v) == Ordering::Equal,
                        _ => false,
                    },
                    None => truth(ev(w)) == Some(true),
                };
                if hit {
                    return ev(t);
                }
            }
            otherwise.as_ref().and_then(|o| ev(o))
        }
        Node::Trunc(x) => ev(x).map(f64::trunc),
        Node::ToF32(x) => ev(x).map(|v| v as f32 as f64),
        Node::Func(f, args) => func(*f, args, &ev),
    }
}

fn func(f: Func, args: &[Node], ev: &dyn Fn(&Node) -> Option<f64>) -> Option<f64> {
    let one = || ev(&args[0]);
    match f {
        Func::Abs => one().map(f64::abs),
        Func::Sqrt => one().map(f64::sqrt),
        Func::Ln => one().map(f64::ln),
        Func::Log10 => one().map(f64::log10),
        Func::Log2 => one().map(f64::log2),
        Func::Exp => one().map(f64::exp),
        Func::Floor => one().map(f64::floor),
        Func::Ceil => one().map(f64::ceil),
        Func::Round => one().map(f64::round),
        Func::Power => Some(ev(&args[0])?.powf(ev(&args[1])?)),
        // GREATEST / LEAST skip NULLs and compare by total order (keeping the first on ties).
        Func::Greatest | Func::Least => {
            let want = if matches!(f, Func::Greatest) {
                Ordering::Greater
            } else {
                Ordering::Less
            };
            args.iter().filter_map(ev).reduce(
                |best, v| {
                    if v.total_cmp(&best) == want {
                        v
                    } else {
                        best
                    }
                },
            )
        }
        Func::Coalesce => args.iter().find_map(ev),
        Func::NullIf => {
            let a = ev(&args[0])?;
            match ev(&args[1]) {
                Some(b) if a.total_cmp(&b) == Ordering::Equal => None,
                _ => Some(a),
            }
        }
    }
}
