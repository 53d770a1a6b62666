-- Derived electrical and thermal features of one reading, per thing.
-- Today the stream computes exactly these in Rust (src/features.rs); the DataFusion feature engine
-- (issue 4) will run this file over history for training and over the stream for scoring, with a parity
-- test between the two.
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
    AS temp_zone_spread
FROM telemetry;
