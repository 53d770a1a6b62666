//! Simulator of a plant of ovens, mixers and conveyors with labelled fault injection.
//!
//! Readings go round-robin over the things; the event time of round `r` is `start_ts + r * interval_ms`.
//! Every thing has its own random streams (one for the signal, one for fault scheduling), so a thing's
//! normal signal depends only on the seed and its index: the same seed with and without faults gives the
//! same readings outside the fault episodes, and the fault effect ends exactly at the episode's `end_ts`.
//!
//! Values are rounded to 4 decimals so that a point written with [`write_jsonl`] and decoded again is
//! bit-identical to the point the simulator produced (replay and live runs see the same numbers).

use crate::event::{Name, Origin, Point};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::f64::consts::TAU;
use std::io::Write as _;

#[cfg(test)]
mod tests;

/// Injected fault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    VoltageSpike,
    PhaseImbalance,
    OverheatDrift,
    PowerFactorDegradation,
    BearingWear,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::VoltageSpike,
        FaultKind::PhaseImbalance,
        FaultKind::OverheatDrift,
        FaultKind::PowerFactorDegradation,
        FaultKind::BearingWear,
    ];

    /// The snake_case name used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            FaultKind::VoltageSpike => "voltage_spike",
            FaultKind::PhaseImbalance => "phase_imbalance",
            FaultKind::OverheatDrift => "overheat_drift",
            FaultKind::PowerFactorDegradation => "power_factor_degradation",
            FaultKind::BearingWear => "bearing_wear",
        }
    }

    /// Inclusive range of episode lengths, in readings.
    pub fn length_range(&self) -> (u64, u64) {
        match self {
            FaultKind::VoltageSpike => (3, 10),
            FaultKind::PhaseImbalance => (30, 120),
            FaultKind::OverheatDrift => (20, 90),
            FaultKind::PowerFactorDegradation => (30, 120),
            FaultKind::BearingWear => (30, 120),
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;

    /// The snake_case name, e.g. `phase_imbalance`.
    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(FaultKind::as_str).collect();
                format!(
                    "unknown fault kind `{s}` (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// Equipment classes of the simulated plant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EquipmentType {
    Oven,
    Mixer,
    Conveyor,
}

/// Thing index -> equipment, repeating every 10 things (4 ovens, 3 mixers, 3 conveyors). Interleaved so
/// that even a 3-thing plant has one of each.
const MIX: [EquipmentType; 10] = [
    EquipmentType::Oven,
    EquipmentType::Mixer,
    EquipmentType::Conveyor,
    EquipmentType::Oven,
    EquipmentType::Mixer,
    EquipmentType::Conveyor,
    EquipmentType::Oven,
    EquipmentType::Mixer,
    EquipmentType::Conveyor,
    EquipmentType::Oven,
];

impl EquipmentType {
    /// The equipment of thing `index` (deterministic: ~40% ovens, ~30% mixers, ~30% conveyors).
    pub fn of_index(index: usize) -> Self {
        MIX[index % MIX.len()]
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            EquipmentType::Oven => "oven",
            EquipmentType::Mixer => "mixer",
            EquipmentType::Conveyor => "conveyor",
        }
    }

    /// Fault kinds that can be injected into this equipment.
    pub fn fault_kinds(&self) -> &'static [FaultKind] {
        match self {
            EquipmentType::Oven => &[
                FaultKind::VoltageSpike,
                FaultKind::PhaseImbalance,
                FaultKind::OverheatDrift,
                FaultKind::PowerFactorDegradation,
            ],
            EquipmentType::Mixer => &FaultKind::ALL,
            EquipmentType::Conveyor => &[
                FaultKind::VoltageSpike,
                FaultKind::PhaseImbalance,
                FaultKind::PowerFactorDegradation,
                FaultKind::BearingWear,
            ],
        }
    }

    /// Feature names in the order the simulator emits them.
    pub fn features(&self) -> &'static [&'static str] {
        match self {
            EquipmentType::Oven => &[
                "voltage_a",
                "voltage_b",
                "voltage_c",
                "current_a",
                "current_b",
                "current_c",
                "power_factor",
                "temp_zone_1",
                "temp_zone_2",
                "temp_zone_3",
            ],
            EquipmentType::Mixer => &[
                "voltage_a",
                "voltage_b",
                "voltage_c",
                "current_a",
                "current_b",
                "current_c",
                "power_factor",
                "vibration_rms",
                "speed_rpm",
                "temp_motor",
            ],
            EquipmentType::Conveyor => &[
                "voltage_a",
                "voltage_b",
                "voltage_c",
                "current_a",
                "current_b",
                "current_c",
                "power_factor",
                "vibration_rms",
                "speed_mps",
            ],
        }
    }
}

/// The thing id of thing `index`, e.g. `oven-00042`.
pub fn thing_id(index: usize) -> Name {
    let mut id = Name::new(EquipmentType::of_index(index).as_str());
    id.push('-');
    id.push_str(&format!("{index:05}"));
    id
}

/// One injected fault: readings of `thing_id` with start_ts <= ts <= end_ts carry label 1.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultEpisode {
    pub thing_id: Name,
    pub kind: FaultKind,
    /// Event time of the first faulty reading, epoch ms.
    pub start_ts: i64,
    /// Event time of the last faulty reading (inclusive); the next reading is normal again.
    pub end_ts: i64,
}

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Number of simulated things (at least 1 is used).
    pub things: usize,
    /// Seed of all random streams: the same config gives the same points.
    pub seed: u64,
    /// Event-time interval between two readings of one thing.
    pub interval_ms: i64,
    /// Event time of the first round, epoch ms.
    pub start_ts: i64,
    /// Expected fault episodes per thing per 1,000 readings (0 = none). Precisely: the probability that a
    /// fault starts at a reading where one may start (not in the first 300 readings of a thing, not within
    /// 300 readings after the previous episode ended).
    pub faults_per_1000: f64,
    /// The fault mix: kinds that may be injected (empty = every kind the equipment supports). A thing
    /// whose equipment supports none of them gets no faults.
    pub fault_kinds: Vec<FaultKind>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            things: 100,
            seed: 42,
            interval_ms: 1000,
            start_ts: 1_767_225_600_000,
            faults_per_1000: 2.0,
            fault_kinds: Vec::new(),
        }
    }
}

/// Readings of a thing before the first fault may start.
pub const WARMUP_READINGS: u64 = 300;
/// Quiet readings after an episode before the next may start.
pub const QUIET_READINGS: u64 = 300;

const NOMINAL_VOLTAGE: f64 = 230.0;

const F_VOLTAGE: [Name; 3] = [
    Name::const_new("voltage_a"),
    Name::const_new("voltage_b"),
    Name::const_new("voltage_c"),
];
const F_CURRENT: [Name; 3] = [
    Name::const_new("current_a"),
    Name::const_new("current_b"),
    Name::const_new("current_c"),
];
const F_PF: Name = Name::const_new("power_factor");
const F_ZONE: [Name; 3] = [
    Name::const_new("temp_zone_1"),
    Name::const_new("temp_zone_2"),
    Name::const_new("temp_zone_3"),
];
const F_VIB: Name = Name::const_new("vibration_rms");
const F_RPM: Name = Name::const_new("speed_rpm");
const F_MPS: Name = Name::const_new("speed_mps");
const F_TMOTOR: Name = Name::const_new("temp_motor");

/// A fault in progress on one thing.
#[derive(Clone, Debug)]
struct ActiveFault {
    kind: FaultKind,
    /// Reading index (of the thing) of the first faulty reading.
    start_n: u64,
    len: u64,
    /// Affected phase (0..3) or oven zone (0..3).
    which: usize,
    /// Kind-specific size: relative voltage swell, relative current drop, degrees per reading,
    /// power-factor drop, or vibration factor.
    magnitude: f64,
    /// Readings over which pf degradation / bearing wear reach full size.
    ramp: u64,
    /// Relative speed loss at full bearing wear.
    speed_drop: f64,
}

impl ActiveFault {
    /// Ramp progress in (0, 1] at step `k` (0-based) of the episode.
    fn ramp_at(&self, k: u64) -> f64 {
        ((k + 1) as f64 / self.ramp as f64).min(1.0)
    }
}

struct ThingState {
    id: Name,
    etype: Name,
    equip: EquipmentType,
    rng: SmallRng,
    fault_rng: SmallRng,
    /// Readings emitted so far.
    n: u64,
    v_offset: [f64; 3],
    v_drift: f64,
    load_base: f64,
    load_amp: f64,
    load_omega: f64,
    load_phase: f64,
    load_ar: f64,
    i_rated: f64,
    i_mismatch: [f64; 3],
    pf_base: f64,
    setpoints: [f64; 3],
    heat_amp: f64,
    heat_omega: f64,
    heat_phase: [f64; 3],
    vib_base: f64,
    speed_base: f64,
    motor_base: f64,
    motor_temp: f64,
    fault: Option<ActiveFault>,
    /// First reading index at which a new fault may start.
    next_fault_n: u64,
}

fn mix_seed(seed: u64, index: usize, salt: u64) -> u64 {
    // splitmix64 finaliser: neighbouring thing indexes get unrelated streams.
    let mut z = seed.wrapping_add(salt).wrapping_add(
        (index as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn gauss(rng: &mut SmallRng) -> f64 {
    rng.sample::<f64, _>(StandardNormal)
}

#[inline]
fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

impl ThingState {
    fn new(seed: u64, index: usize) -> Self {
        let equip = EquipmentType::of_index(index);
        let mut rng = SmallRng::seed_from_u64(mix_seed(seed, index, 0x5157_0000));
        let fault_rng = SmallRng::seed_from_u64(mix_seed(seed, index, 0xFA17_0000));
        let v_offset = [
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        ];
        let load_base = rng.random_range(0.55..0.7);
        let load_amp = rng.random_range(0.08..0.18);
        let load_period: f64 = rng.random_range(600.0..1800.0);
        let load_phase = rng.random_range(0.0..TAU);
        let i_rated = match equip {
            EquipmentType::Oven => rng.random_range(20.0..32.0),
            EquipmentType::Mixer => rng.random_range(10.0..20.0),
            EquipmentType::Conveyor => rng.random_range(5.0..10.0),
        };
        let i_mismatch = [
            rng.random_range(-0.005..0.005),
            rng.random_range(-0.005..0.005),
            rng.random_range(-0.005..0.005),
        ];
        let pf_base = rng.random_range(0.915..0.93);
        let setpoints = [
            rng.random_range(180.0..200.0),
            rng.random_range(180.0..200.0),
            rng.random_range(180.0..200.0),
        ];
        let heat_amp = rng.random_range(0.5..0.9);
        let heat_period: f64 = rng.random_range(240.0..480.0);
        let heat_phase = [
            rng.random_range(0.0..TAU),
            rng.random_range(0.0..TAU),
            rng.random_range(0.0..TAU),
        ];
        let (vib_base, speed_base) = match equip {
            EquipmentType::Mixer => (rng.random_range(1.7..2.3), rng.random_range(1440.0..1460.0)),
            _ => (rng.random_range(1.2..1.8), rng.random_range(1.4..1.6)),
        };
        let motor_base = rng.random_range(49.0..53.0);
        let mut t = ThingState {
            id: thing_id(index),
            etype: Name::const_new(equip.as_str()),
            equip,
            rng,
            fault_rng,
            n: 0,
            v_offset,
            v_drift: 0.0,
            load_base,
            load_amp,
            load_omega: TAU / load_period,
            load_phase,
            load_ar: 0.0,
            i_rated,
            i_mismatch,
            pf_base,
            setpoints,
            heat_amp,
            heat_omega: TAU / heat_period,
            heat_phase,
            vib_base,
            speed_base,
            motor_base,
            motor_temp: 0.0,
            fault: None,
            next_fault_n: WARMUP_READINGS,
        };
        // Start the motor in thermal equilibrium so the first readings have no warm-up transient.
        t.motor_temp = t.motor_target(t.load(0.0));
        t
    }

    fn load(&self, t: f64) -> f64 {
        (self.load_base
            + self.load_amp * (self.load_omega * t + self.load_phase).sin()
            + self.load_ar)
            .clamp(0.15, 1.0)
    }

    fn motor_target(&self, load: f64) -> f64 {
        self.motor_base + 10.0 * load
    }

    /// Possibly starts a fault at the current reading; returns the new episode.
    fn maybe_start_fault(
        &mut self,
        p: f64,
        allowed: &[FaultKind],
        ts: i64,
        interval_ms: i64,
    ) -> Option<FaultEpisode> {
        if self.fault.is_some() || self.n < self.next_fault_n || p <= 0.0 {
            return None;
        }
        let r = &mut self.fault_rng;
        if r.random::<f64>() >= p {
            return None;
        }
        let kinds = self.equip.fault_kinds();
        let kind = if allowed.is_empty() {
            kinds[r.random_range(0..kinds.len())]
        } else {
            let mix: Vec<FaultKind> = kinds
                .iter()
                .copied()
                .filter(|k| allowed.contains(k))
                .collect();
            if mix.is_empty() {
                return None;
            }
            mix[r.random_range(0..mix.len())]
        };
        let (lo, hi) = kind.length_range();
        let len = r.random_range(lo..=hi);
        let which = r.random_range(0..3usize);
        let magnitude = match kind {
            FaultKind::VoltageSpike => r.random_range(0.12..0.25),
            FaultKind::PhaseImbalance => r.random_range(0.15..0.35),
            FaultKind::OverheatDrift => r.random_range(0.8..2.0),
            FaultKind::PowerFactorDegradation => r.random_range(0.10..0.20),
            FaultKind::BearingWear => r.random_range(2.5..4.0),
        };
        let ramp = r.random_range(5..=15u64);
        let speed_drop = r.random_range(0.01..0.03);
        self.fault = Some(ActiveFault {
            kind,
            start_n: self.n,
            len,
            which,
            magnitude,
            ramp,
            speed_drop,
        });
        let end_n = (len - 1) as i64;
        Some(FaultEpisode {
            thing_id: self.id.clone(),
            kind,
            start_ts: ts,
            end_ts: ts.saturating_add(end_n.saturating_mul(interval_ms)),
        })
    }

    /// Computes the current reading into `values` and advances the state by one reading.
    fn read(&mut self, values: &mut Vec<(Name, f64)>) -> u8 {
        let t = self.n as f64;
        // Normal behaviour: every random draw happens whether or not a fault is active, so faults never
        // shift the random streams of the normal signal.
        self.load_ar = 0.98 * self.load_ar + 0.004 * gauss(&mut self.rng);
        self.v_drift = 0.998 * self.v_drift + 0.03 * gauss(&mut self.rng);
        let load = self.load(t);
        let motor_target = self.motor_target(load);
        let rng = &mut self.rng;
        let mut v = [0.0; 3];
        for (p, vp) in v.iter_mut().enumerate() {
            *vp = NOMINAL_VOLTAGE + self.v_offset[p] + self.v_drift + 0.4 * gauss(rng);
        }
        let i_base = self.i_rated * (0.25 + 0.75 * load);
        let mut cur = [0.0; 3];
        for (p, ip) in cur.iter_mut().enumerate() {
            *ip = i_base * (1.0 + self.i_mismatch[p]) * (1.0 + 0.01 * gauss(rng));
        }
        let mut pf = (self.pf_base + 0.05 * (load - 0.6) + 0.003 * gauss(rng)).clamp(0.5, 0.99);
        let mut zones = [0.0; 3];
        let mut vib = 0.0;
        let mut speed = 0.0;
        let mut tmotor = 0.0;
        match self.equip {
            EquipmentType::Oven => {
                for (z, tz) in zones.iter_mut().enumerate() {
                    *tz = self.setpoints[z]
                        + self.heat_amp * (self.heat_omega * t + self.heat_phase[z]).sin()
                        + 0.5 * (load - 0.6)
                        + 0.3 * gauss(rng);
                }
            }
            EquipmentType::Mixer => {
                vib = self.vib_base * (0.9 + 0.2 * load) * (1.0 + 0.03 * gauss(rng));
                speed = self.speed_base * (1.0 - 0.004 * load) * (1.0 + 0.002 * gauss(rng));
                self.motor_temp += 0.01 * (motor_target - self.motor_temp);
                tmotor = self.motor_temp + 0.2 * gauss(rng);
            }
            EquipmentType::Conveyor => {
                vib = self.vib_base * (0.9 + 0.2 * load) * (1.0 + 0.03 * gauss(rng));
                speed = self.speed_base * (1.0 - 0.01 * load) * (1.0 + 0.003 * gauss(rng));
            }
        }

        let mut label = 0;
        if let Some(f) = &self.fault {
            let k = self.n - f.start_n;
            label = 1;
            match f.kind {
                FaultKind::VoltageSpike => v[f.which] *= 1.0 + f.magnitude,
                FaultKind::PhaseImbalance => cur[f.which] *= 1.0 - f.magnitude,
                FaultKind::OverheatDrift => {
                    let rise = f.magnitude * (k + 1) as f64;
                    match self.equip {
                        EquipmentType::Oven => zones[f.which] += rise,
                        _ => tmotor += rise,
                    }
                }
                FaultKind::PowerFactorDegradation => {
                    let healthy = pf;
                    pf = (pf - f.magnitude * f.ramp_at(k)).max(0.5);
                    // Same real power at a lower power factor draws more current.
                    let scale = healthy / pf;
                    for ip in cur.iter_mut() {
                        *ip *= scale;
                    }
                }
                FaultKind::BearingWear => {
                    let r = f.ramp_at(k);
                    vib *= 1.0 + (f.magnitude - 1.0) * r;
                    speed *= 1.0 - f.speed_drop * r;
                }
            }
            if k + 1 >= f.len {
                self.next_fault_n = self.n + 1 + QUIET_READINGS;
                self.fault = None;
            }
        }

        values.clear();
        for p in 0..3 {
            values.push((F_VOLTAGE[p].clone(), round4(v[p])));
        }
        for p in 0..3 {
            values.push((F_CURRENT[p].clone(), round4(cur[p])));
        }
        values.push((F_PF.clone(), round4(pf)));
        match self.equip {
            EquipmentType::Oven => {
                for z in 0..3 {
                    values.push((F_ZONE[z].clone(), round4(zones[z])));
                }
            }
            EquipmentType::Mixer => {
                values.push((F_VIB.clone(), round4(vib)));
                values.push((F_RPM.clone(), round4(speed)));
                values.push((F_TMOTOR.clone(), round4(tmotor)));
            }
            EquipmentType::Conveyor => {
                values.push((F_VIB.clone(), round4(vib)));
                values.push((F_MPS.clone(), round4(speed)));
            }
        }
        self.n += 1;
        label
    }
}

/// Deterministic generator: readings round-robin over things, event time advancing by `interval_ms`
/// each round. The same config gives the same points.
pub struct Simulator {
    cfg: SimulatorConfig,
    things: Vec<ThingState>,
    next: usize,
    seq: u64,
    fault_p: f64,
    episodes: Vec<FaultEpisode>,
}

impl Simulator {
    /// A simulator at round 0. `things == 0` is treated as 1; a negative or non-finite
    /// `faults_per_1000` as 0.
    pub fn new(cfg: SimulatorConfig) -> Self {
        let count = cfg.things.max(1);
        let things = (0..count).map(|i| ThingState::new(cfg.seed, i)).collect();
        let fault_p = if cfg.faults_per_1000.is_finite() {
            (cfg.faults_per_1000 / 1000.0).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Simulator {
            cfg,
            things,
            next: 0,
            seq: 0,
            fault_p,
            episodes: Vec::new(),
        }
    }

    /// The configuration this simulator was built with.
    pub fn config(&self) -> &SimulatorConfig {
        &self.cfg
    }

    /// Number of simulated things (`config().things`, at least 1).
    pub fn thing_count(&self) -> usize {
        self.things.len()
    }

    /// Points emitted so far.
    pub fn emitted(&self) -> u64 {
        self.seq
    }

    /// The next reading (never ends).
    pub fn next_point(&mut self) -> Point {
        let mut values = Vec::with_capacity(10);
        let (thing_id, equipment_type, ts, label) = self.next_into(&mut values);
        let seq = self.seq - 1;
        Point {
            thing_id,
            equipment_type,
            ts,
            values,
            label: Some(label),
            seq,
            origin: Origin::None,
            learn_only: false,
        }
    }

    fn next_into(&mut self, values: &mut Vec<(Name, f64)>) -> (Name, Name, i64, u8) {
        let idx = self.next;
        self.next = if idx + 1 == self.things.len() {
            0
        } else {
            idx + 1
        };
        self.seq += 1;
        let interval = self.cfg.interval_ms;
        let thing = &mut self.things[idx];
        let ts = self
            .cfg
            .start_ts
            .saturating_add((thing.n as i64).saturating_mul(interval));
        if let Some(ep) = thing.maybe_start_fault(self.fault_p, &self.cfg.fault_kinds, ts, interval)
        {
            self.episodes.push(ep);
        }
        let label = thing.read(values);
        (thing.id.clone(), thing.etype.clone(), ts, label)
    }

    /// Fault episodes started so far. The last episode of a thing may end after the readings emitted so
    /// far; see [`Simulator::episodes_emitted`].
    pub fn episodes(&self) -> &[FaultEpisode] {
        &self.episodes
    }

    /// Fault episodes started so far with `end_ts` clipped to the last reading emitted of their thing: they
    /// match the labels of the points emitted so far exactly.
    pub fn episodes_emitted(&self) -> Vec<FaultEpisode> {
        let index: rustc_hash::FxHashMap<&str, &ThingState> =
            self.things.iter().map(|t| (t.id.as_str(), t)).collect();
        self.episodes
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if let Some(t) = index.get(e.thing_id.as_str()) {
                    let last = self
                        .cfg
                        .start_ts
                        .saturating_add((t.n as i64 - 1).saturating_mul(self.cfg.interval_ms));
                    e.end_ts = e.end_ts.min(last);
                }
                e
            })
            .collect()
    }
}

impl Iterator for Simulator {
    type Item = Point;
    fn next(&mut self) -> Option<Point> {
        Some(self.next_point())
    }
}

/// One flat-format telemetry line (DESIGN.md), borrowing the reading.
#[derive(serde::Serialize)]
struct FlatLine<'a> {
    thing_id: &'a str,
    equipment_type: &'a str,
    ts: i64,
    values: FlatValues<'a>,
    label: u8,
}

struct FlatValues<'a>(&'a [(Name, f64)]);

impl serde::Serialize for FlatValues<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k.as_str(), v)?;
        }
        m.end()
    }
}

/// Writes `points` readings as flat-format JSON lines (`thing_id`, `equipment_type`, `ts` in epoch ms,
/// `values`, `label`) and returns the fault episodes, clipped to the readings written.
pub fn write_jsonl(
    cfg: SimulatorConfig,
    points: usize,
    out: impl std::io::Write,
) -> std::io::Result<Vec<FaultEpisode>> {
    let mut sim = Simulator::new(cfg);
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    let mut values = Vec::with_capacity(10);
    for _ in 0..points {
        let (thing_id, equipment_type, ts, label) = sim.next_into(&mut values);
        let line = FlatLine {
            thing_id: &thing_id,
            equipment_type: &equipment_type,
            ts,
            values: FlatValues(&values),
            label,
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(sim.episodes_emitted())
}
