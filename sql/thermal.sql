-- Thermal feature set, per thing: zone spread, zone trends and their short-term noise.
SELECT
  thing_id,
  ts,
  GREATEST(temp_zone_1, temp_zone_2, temp_zone_3) - LEAST(temp_zone_1, temp_zone_2, temp_zone_3)
    AS temp_zone_spread,
  -- Change of the mean zone temperature since the previous reading (heating / cooling rate per sample).
  (temp_zone_1 + temp_zone_2 + temp_zone_3) / 3.0
    - LAG((temp_zone_1 + temp_zone_2 + temp_zone_3) / 3.0, 1)
        OVER (PARTITION BY thing_id ORDER BY ts)
    AS temp_mean_delta,
  AVG(temp_zone_1) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 19 PRECEDING AND CURRENT ROW)
    AS temp_zone_1_avg_20,
  STDDEV(temp_zone_1) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 19 PRECEDING AND CURRENT ROW)
    AS temp_zone_1_std_20,
  -- Zone 2 (the middle zone) above the mean of its neighbours, over the last 5 readings.
  AVG(temp_zone_2 - (temp_zone_1 + temp_zone_3) / 2.0)
    OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 4 PRECEDING AND CURRENT ROW)
    AS temp_zone_2_excess_5,
  COUNT(temp_zone_1) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 19 PRECEDING AND CURRENT ROW)
    AS temp_zone_1_samples_20
FROM telemetry;
