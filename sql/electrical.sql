-- Electrical feature set, per thing.
-- Row features are the derived features the stream computes by default (src/features.rs); the window
-- features add short-term context. A dataflow uses this file with `features: { sql: ../sql/electrical.sql }`;
-- training runs it over history with DataFusion. The parity test proves both give the same values.
SELECT
  thing_id,
  ts,
  GREATEST(voltage_a, voltage_b, voltage_c) - LEAST(voltage_a, voltage_b, voltage_c)
    AS voltage_imbalance,
  CASE WHEN ABS((current_a + current_b + current_c) / 3.0) > 1e-9
       THEN (GREATEST(current_a, current_b, current_c) - LEAST(current_a, current_b, current_c))
            / ABS((current_a + current_b + current_c) / 3.0) * 100.0
       ELSE 0.0 END
    AS current_imbalance_pct,
  GREATEST(temp_zone_1, temp_zone_2, temp_zone_3) - LEAST(temp_zone_1, temp_zone_2, temp_zone_3)
    AS temp_zone_spread,
  -- Mean phase voltage against its average over the last 10 readings (sags and swells).
  (voltage_a + voltage_b + voltage_c) / 3.0
    - AVG((voltage_a + voltage_b + voltage_c) / 3.0)
        OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 9 PRECEDING AND CURRENT ROW)
    AS voltage_dev_10,
  STDDEV((current_a + current_b + current_c) / 3.0)
    OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 9 PRECEDING AND CURRENT ROW)
    AS current_std_10,
  MAX(power_factor) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 9 PRECEDING AND CURRENT ROW)
    - MIN(power_factor) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 9 PRECEDING AND CURRENT ROW)
    AS power_factor_range_10
FROM telemetry;
