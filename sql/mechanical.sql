-- Mechanical feature set, per thing: vibration level and trend, speed stability.
SELECT
  thing_id,
  ts,
  vibration_rms
    / NULLIF(AVG(vibration_rms) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 29 PRECEDING AND CURRENT ROW), 0)
    AS vibration_ratio_30,
  MAX(vibration_rms) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 29 PRECEDING AND CURRENT ROW)
    AS vibration_max_30,
  STDDEV_POP(speed_rpm) OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 9 PRECEDING AND CURRENT ROW)
    AS speed_std_10,
  speed_rpm - LAG(speed_rpm, 3) OVER (PARTITION BY thing_id ORDER BY ts) AS speed_change_3,
  SUM(CASE WHEN vibration_rms > 4.5 THEN 1 ELSE 0 END)
    OVER (PARTITION BY thing_id ORDER BY ts ROWS BETWEEN 29 PRECEDING AND CURRENT ROW)
    AS vibration_over_limit_30
FROM telemetry;
