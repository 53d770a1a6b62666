//! DataFusion analyzed logical plan -> expression tree + window specs for the stream evaluator.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::expr::{Case, Cast, TryCast, WindowFunction};
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator, WindowFrameBound, WindowFrameUnits,
    WindowFunctionDefinition,
};
use datafusion::prelude::SessionContext;

use super::{history_schema, SqlFeatureError, TABLE, THING_ID, TS};

/// A compiled feature set.
#[derive(Debug)]
pub(crate) struct Program {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub windows: Vec<WindowSpec>,
    pub exprs: Vec<Node>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Agg {
    Avg,
    Sum,
    Count,
    Min,
    Max,
    VarSamp,
    VarPop,
    StddevSamp,
    StddevPop,
    /// `lag(x, offset, default)`: the frame is ignored, the buffer holds offset + 1 values.
    Lag {
        offset: usize,
        default: Option<f64>,
    },
}

/// One window function: its argument and how many rows (current included) its buffer keeps.
#[derive(Debug)]
pub(crate) struct WindowSpec {
    pub agg: Agg,
    pub arg: Node,
    pub rows: usize,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Cmp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Func {
    Abs,
    Sqrt,
    Ln,
    Log10,
    Log2,
    Exp,
    Power,
    Floor,
    Ceil,
    Round,
    Greatest,
    Least,
    Coalesce,
    NullIf,
}

/// Values are `Option<f64>`: `None` is SQL NULL; booleans are 1.0 / 0.0.
#[derive(Debug)]
pub(crate) enum Node {
    Input(usize),
    Window(usize),
    Const(Option<f64>),
    Neg(Box<Node>),
    Not(Box<Node>),
    IsNull(Box<Node>, bool),
    Arith(Arith, bool, Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Case {
        operand: Option<Box<Node>>,
        whens: Vec<(Node, Node)>,
        otherwise: Option<Box<Node>>,
    },
    Func(Func, Vec<Node>),
    /// Cast to an integer type: truncation toward zero, as Arrow casts floats.
    Trunc(Box<Node>),
    /// Cast to Float32.
    ToF32(Box<Node>),
}

#[derive(Clone, Copy)]
enum Slot {
    Input(usize),
    Window(usize),
    Key,
}

struct Compiler<'a> {
    file: &'a str,
    inputs: Vec<String>,
    slots: HashMap<String, Slot>,
    windows: Vec<WindowSpec>,
}

fn unsupported(file: &str, construct: impl Into<String>) -> SqlFeatureError {
    SqlFeatureError::Unsupported {
        file: file.to_string(),
        construct: construct.into(),
    }
}

fn plan_err(file: &str, e: impl std::fmt::Display) -> SqlFeatureError {
    SqlFeatureError::Plan {
        file: file.to_string(),
        message: e.to_string(),
    }
}

/// Plans `sql` with DataFusion against a `telemetry` table of the candidate columns, runs the analyzer
/// (type coercion), and compiles the result.
pub(crate) fn compile(
    file: &str,
    sql: &str,
    columns: &[String],
) -> Result<Program, SqlFeatureError> {
    let ctx = SessionContext::new();
    let schema = Arc::new(history_schema(columns));
    let table = MemTable::try_new(schema, vec![vec![]]).map_err(|e| plan_err(file, e))?;
    ctx.register_table(TABLE, Arc::new(table))
        .map_err(|e| plan_err(file, e))?;
    let state = ctx.state();
    let plan = futures::executor::block_on(state.create_logical_plan(sql))
        .map_err(|e| plan_err(file, e))?;
    let plan = state
        .analyzer()
        .execute_and_check(plan, state.config_options(), |_, _| {})
        .map_err(|e| plan_err(file, e))?;
    let mut c = Compiler {
        file,
        inputs: Vec::new(),
        slots: HashMap::new(),
        windows: Vec::new(),
    };
    c.plan(&plan)
}

impl Compiler<'_> {
    fn plan(&mut self, plan: &LogicalPlan) -> Result<Program, SqlFeatureError> {
        // A trailing ORDER BY is harmless: the batch result is sorted by (thing_id, ts) anyway.
        let plan = match plan {
            LogicalPlan::Sort(s) => s.input.as_ref(),
            p => p,
        };
        let LogicalPlan::Projection(proj) = plan else {
            return Err(self.node(plan));
        };
        self.input_chain(&proj.input)?;
        let schema = proj.input.schema();
        let (mut has_thing, mut has_ts) = (false, false);
        let mut outputs = Vec::new();
        let mut exprs = Vec::new();
        for (i, e) in proj.expr.iter().enumerate() {
            if let Expr::Column(col) = strip_alias(e) {
                if col.name == THING_ID || col.name == TS {
                    has_thing |= col.name == THING_ID;
                    has_ts |= col.name == TS;
                    continue;
                }
            }
            let ty = e.get_type(schema).map_err(|x| plan_err(self.file, x))?;
            if !(ty.is_numeric() || ty == DataType::Boolean || ty == DataType::Null) {
                return Err(unsupported(
                    self.file,
                    format!("output `{e}` of type {ty} (features are numeric)"),
                ));
            }
            outputs.push(proj.schema.field(i).name().clone());
            exprs.push(self.expr(e, schema)?);
        }
        if !has_thing || !has_ts {
            return Err(unsupported(
                self.file,
                "a select list without `thing_id` and `ts` (rows are matched by them)",
            ));
        }
        if outputs.is_empty() {
            return Err(unsupported(self.file, "a select list without any feature"));
        }
        Ok(Program {
            inputs: std::mem::take(&mut self.inputs),
            outputs,
            windows: std::mem::take(&mut self.windows),
            exprs,
        })
    }

    fn node(&self, plan: &LogicalPlan) -> SqlFeatureError {
        let text = format!("{}", plan.display());
        unsupported(
            self.file,
            format!(
                "plan node `{text}` (a feature set is one SELECT over `{TABLE}`: row expressions and window functions)"
            ),
        )
    }

    /// Window nodes (innermost first) down to the table scan; registers input and window slots.
    fn input_chain(&mut self, plan: &LogicalPlan) -> Result<(), SqlFeatureError> {
        match plan {
            LogicalPlan::TableScan(scan)
                if scan.table_name.table() == TABLE && scan.filters.is_empty() =>
            {
                for f in scan.projected_schema.fields() {
                    let slot = if f.name() == THING_ID || f.name() == TS {
                        Slot::Key
                    } else {
                        // Inputs are registered lazily, when an expression reads them.
                        continue;
                    };
                    self.slots.insert(f.name().clone(), slot);
                }
                Ok(())
            }
            LogicalPlan::Window(w) => {
                self.input_chain(&w.input)?;
                let n_in = w.input.schema().fields().len();
                for (i, e) in w.window_expr.iter().enumerate() {
                    let k = self.window(strip_alias(e), w.input.schema())?;
                    let name = w.schema.field(n_in + i).name().clone();
                    self.slots.insert(name, Slot::Window(k));
                }
                Ok(())
            }
            other => Err(self.node(other)),
        }
    }

    fn window(&mut self, e: &Expr, schema: &DFSchema) -> Result<usize, SqlFeatureError> {
        let Expr::WindowFunction(wf) = e else {
            return Err(unsupported(self.file, format!("window expression `{e}`")));
        };
        let WindowFunction { fun, params } = wf.as_ref();
        let bad = |what: &str| unsupported(self.file, format!("{what} in `{e}`"));
        let part_ok = params.partition_by.len() == 1
            && matches!(strip_alias(&params.partition_by[0]), Expr::Column(c) if c.name == THING_ID);
        if !part_ok {
            return Err(bad("a window not PARTITION BY thing_id"));
        }
        let order_ok = params.order_by.len() == 1
            && params.order_by[0].asc
            && matches!(strip_alias(&params.order_by[0].expr), Expr::Column(c) if c.name == TS);
        if !order_ok {
            return Err(bad("a window not ORDER BY ts (ascending)"));
        }
        if params.filter.is_some() || params.distinct {
            return Err(bad("FILTER / DISTINCT"));
        }
        if matches!(
            params.null_treatment,
            Some(datafusion::sql::sqlparser::ast::NullTreatment::IgnoreNulls)
        ) {
            return Err(bad("IGNORE NULLS"));
        }
        let name = match fun {
            WindowFunctionDefinition::AggregateUDF(f) => f.name().to_string(),
            WindowFunctionDefinition::WindowUDF(f) => f.name().to_string(),
        };
        let arg = |i: usize| -> Result<&Expr, SqlFeatureError> {
            params.args.get(i).ok_or_else(|| bad("a missing argument"))
        };
        let agg = match name.as_str() {
            "avg" => Agg::Avg,
            "sum" => Agg::Sum,
            "count" => Agg::Count,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "var" | "var_samp" => Agg::VarSamp,
            "var_pop" => Agg::VarPop,
            "stddev" | "stddev_samp" => Agg::StddevSamp,
            "stddev_pop" => Agg::StddevPop,
            "lag" => {
                let offset = match params.args.get(1) {
                    None => 1,
                    Some(e) => match literal(strip_cast(e)) {
                        Some(Some(v)) if v >= 0.0 && v.fract() == 0.0 => v as usize,
                        _ => {
                            return Err(bad(
                                "a lag offset that is not a non-negative integer literal",
                            ))
                        }
                    },
                };
                let default = match params.args.get(2) {
                    None => None,
                    Some(e) => match literal(strip_cast(e)) {
                        Some(v) => v,
                        None => return Err(bad("a lag default that is not a numeric literal")),
                    },
                };
                Agg::Lag { offset, default }
            }
            other => return Err(bad(&format!("window function `{other}`"))),
        };
        let rows = match agg {
            Agg::Lag { offset, .. } => offset + 1,
            _ => {
                let f = &params.window_frame;
                let n = match (&f.units, &f.start_bound, &f.end_bound) {
                    (
                        WindowFrameUnits::Rows,
                        WindowFrameBound::Preceding(ScalarValue::UInt64(Some(n))),
                        WindowFrameBound::CurrentRow,
                    ) => *n as usize,
                    _ => {
                        return Err(bad(
                            "a frame other than ROWS BETWEEN n PRECEDING AND CURRENT ROW",
                        ))
                    }
                };
                n + 1
            }
        };
        let arg = if matches!(agg, Agg::Count) && params.args.is_empty() {
            Node::Const(Some(1.0))
        } else {
            self.expr(arg(0)?, schema)?
        };
        self.windows.push(WindowSpec { agg, arg, rows });
        Ok(self.windows.len() - 1)
    }

    fn expr(&mut self, e: &Expr, schema: &DFSchema) -> Result<Node, SqlFeatureError> {
        let bx = |n: Node| Box::new(n);
        Ok(match e {
            Expr::Alias(a) => self.expr(&a.expr, schema)?,
            Expr::Column(c) => match self.slots.get(&c.name) {
                Some(Slot::Window(k)) => Node::Window(*k),
                Some(Slot::Input(i)) => Node::Input(*i),
                Some(Slot::Key) => {
                    return Err(unsupported(
                        self.file,
                        format!(
                            "`{}` inside an expression (only as a plain select item)",
                            c.name
                        ),
                    ))
                }
                None => {
                    self.inputs.push(c.name.clone());
                    let i = self.inputs.len() - 1;
                    self.slots.insert(c.name.clone(), Slot::Input(i));
                    Node::Input(i)
                }
            },
            Expr::Literal(..) => match literal(e) {
                Some(v) => Node::Const(v),
                None => return Err(unsupported(self.file, format!("literal `{e}`"))),
            },
            Expr::Negative(x) => Node::Neg(bx(self.expr(x, schema)?)),
            Expr::Not(x) => Node::Not(bx(self.expr(x, schema)?)),
            Expr::IsNull(x) => Node::IsNull(bx(self.expr(x, schema)?), true),
            Expr::IsNotNull(x) => Node::IsNull(bx(self.expr(x, schema)?), false),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let l = bx(self.expr(left, schema)?);
                let r = bx(self.expr(right, schema)?);
                let integer = || -> Result<bool, SqlFeatureError> {
                    let ty = e.get_type(schema).map_err(|x| plan_err(self.file, x))?;
                    Ok(ty.is_integer())
                };
                match op {
                    Operator::Plus => Node::Arith(Arith::Add, integer()?, l, r),
                    Operator::Minus => Node::Arith(Arith::Sub, integer()?, l, r),
                    Operator::Multiply => Node::Arith(Arith::Mul, integer()?, l, r),
                    Operator::Divide => Node::Arith(Arith::Div, integer()?, l, r),
                    Operator::Modulo => Node::Arith(Arith::Rem, integer()?, l, r),
                    Operator::Eq => Node::Cmp(Cmp::Eq, l, r),
                    Operator::NotEq => Node::Cmp(Cmp::NotEq, l, r),
                    Operator::Lt => Node::Cmp(Cmp::Lt, l, r),
                    Operator::LtEq => Node::Cmp(Cmp::LtEq, l, r),
                    Operator::Gt => Node::Cmp(Cmp::Gt, l, r),
                    Operator::GtEq => Node::Cmp(Cmp::GtEq, l, r),
                    Operator::And => Node::And(l, r),
                    Operator::Or => Node::Or(l, r),
                    other => {
                        return Err(unsupported(
                            self.file,
                            format!("operator `{other}` in `{e}`"),
                        ))
                    }
                }
            }
            Expr::Between(b) => {
                let lo = Node::Cmp(
                    Cmp::GtEq,
                    bx(self.expr(&b.expr, schema)?),
                    bx(self.expr(&b.low, schema)?),
                );
                let hi = Node::Cmp(
                    Cmp::LtEq,
                    bx(self.expr(&b.expr, schema)?),
                    bx(self.expr(&b.high, schema)?),
                );
                let both = Node::And(bx(lo), bx(hi));
                if b.negated {
                    Node::Not(bx(both))
                } else {
                    both
                }
            }
            Expr::Case(Case {
                expr,
                when_then_expr,
                else_expr,
            }) => {
                let operand = match expr {
                    Some(x) => Some(bx(self.expr(x, schema)?)),
                    None => None,
                };
                let mut whens = Vec::new();
                for (w, t) in when_then_expr {
                    whens.push((self.expr(w, schema)?, self.expr(t, schema)?));
                }
                let otherwise = match else_expr {
                    Some(x) => Some(bx(self.expr(x, schema)?)),
                    None => None,
                };
                Node::Case {
                    operand,
                    whens,
                    otherwise,
                }
            }
            Expr::Cast(Cast { expr, data_type }) | Expr::TryCast(TryCast { expr, data_type }) => {
                let inner = self.expr(expr, schema)?;
                let from = expr.get_type(schema).map_err(|x| plan_err(self.file, x))?;
                match data_type {
                    DataType::Float64 | DataType::Float16 => inner,
                    DataType::Float32 => Node::ToF32(bx(inner)),
                    t if t.is_integer()
                        && (from.is_integer()
                            || from == DataType::Null
                            || from == DataType::Boolean) =>
                    {
                        inner
                    }
                    t if t.is_integer() && from.is_floating() => Node::Trunc(bx(inner)),
                    _ => {
                        return Err(unsupported(
                            self.file,
                            format!("cast from {from} to {data_type} in `{e}`"),
                        ))
                    }
                }
            }
            Expr::ScalarFunction(f) => {
                let func = match f.func.name() {
                    "abs" => Func::Abs,
                    "sqrt" => Func::Sqrt,
                    "ln" => Func::Ln,
                    "log10" => Func::Log10,
                    "log2" => Func::Log2,
                    "exp" => Func::Exp,
                    "power" | "pow" => Func::Power,
                    "floor" => Func::Floor,
                    "ceil" => Func::Ceil,
                    "round" => Func::Round,
                    "greatest" => Func::Greatest,
                    "least" => Func::Least,
                    "coalesce" => Func::Coalesce,
                    "nullif" => Func::NullIf,
                    other => {
                        return Err(unsupported(
                            self.file,
                            format!("function `{other}` in `{e}`"),
                        ))
                    }
                };
                let arity_ok = match func {
                    Func::Power | Func::NullIf => f.args.len() == 2,
                    Func::Round => f.args.len() == 1,
                    Func::Greatest | Func::Least | Func::Coalesce => !f.args.is_empty(),
                    _ => f.args.len() == 1,
                };
                if !arity_ok {
                    return Err(unsupported(
                        self.file,
                        format!("{} arguments to `{}` in `{e}`", f.args.len(), f.func.name()),
                    ));
                }
                let mut args = Vec::new();
                for a in &f.args {
                    args.push(self.expr(a, schema)?);
                }
                Node::Func(func, args)
            }
            Expr::WindowFunction(_) => {
                return Err(unsupported(
                    self.file,
                    format!("nested window function `{e}`"),
                ))
            }
            other => return Err(unsupported(self.file, format!("expression `{other}`"))),
        })
    }
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        e => e,
    }
}

fn strip_cast(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => strip_cast(&c.expr),
        Expr::TryCast(c) => strip_cast(&c.expr),
        Expr::Alias(a) => strip_cast(&a.expr),
        e => e,
    }
}

/// `Some(value)` for a numeric, boolean or NULL literal.
fn literal(e: &Expr) -> Option<Option<f64>> {
    if let Expr::Negative(inner) = e {
        return literal(strip_cast(inner)).map(|v| v.map(|x| -x));
    }
    let Expr::Literal(v, _) = e else {
        return None;
    };
    if v.is_null() {
        return Some(None);
    }
    Some(Some(match v {
        ScalarValue::Float64(Some(x)) => *x,
        ScalarValue::Float32(Some(x)) => *x as f64,
        ScalarValue::Int8(Some(x)) => *x as f64,
        ScalarValue::Int16(Some(x)) => *x as f64,
        ScalarValue::Int32(Some(x)) => *x as f64,
        ScalarValue::Int64(Some(x)) => *x as f64,
        ScalarValue::UInt8(Some(x)) => *x as f64,
        ScalarValue::UInt16(Some(x)) => *x as f64,
        ScalarValue::UInt32(Some(x)) => *x as f64,
        ScalarValue::UInt64(Some(x)) => *x as f64,
        ScalarValue::Boolean(Some(b)) => *b as u8 as f64,
        _ => return None,
    }))
}
