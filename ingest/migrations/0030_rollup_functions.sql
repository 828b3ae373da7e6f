-- Fixed latency histogram buckets shared by every rollup (upper bounds in milliseconds, last is +Inf).
-- Rollups store per-bucket counts (not a quantile sketch): counts add exactly across minutes, hosts and
-- retried merges, and a heatmap reads them directly. Dashboards read percentiles from the counts with
-- blindspot_hist_quantile, interpolating linearly inside the bucket (as Prometheus' histogram_quantile).
-- Bounds: 0.1 0.25 0.5 1 2.5 5 10 25 50 100 250 500 1000 2500 5000 10000 30000 +Inf (18 buckets).
CREATE FUNCTION IF NOT EXISTS blindspot_latency_bounds_ms AS () ->
    [0.1, 0.25, 0.5, 1., 2.5, 5., 10., 25., 50., 100., 250., 500., 1000., 2500., 5000., 10000., 30000., inf];

-- One-hot bucket vector of a latency in nanoseconds: sumForEach over it is the histogram.
CREATE FUNCTION IF NOT EXISTS blindspot_latency_bucket AS (ns) ->
    arrayMap(b -> toUInt64(b = arrayFirstIndex(x -> (ns / 1e6) <= x, blindspot_latency_bounds_ms())),
             range(1, 19));

-- Quantile q (0..1) in milliseconds of histogram h (18 counts); NaN when empty. Split in steps because
-- SQL functions cannot bind local names: c cumulative counts, r target rank, i bucket index.
CREATE FUNCTION IF NOT EXISTS blindspot_hq_step AS (h, c, r, i) ->
    if(i = 0, nan,
       if(i = 1, 0., blindspot_latency_bounds_ms()[i - 1])
       + (if(i = 18, blindspot_latency_bounds_ms()[17], blindspot_latency_bounds_ms()[i])
          - if(i = 1, 0., blindspot_latency_bounds_ms()[i - 1]))
         * (r - if(i = 1, 0, c[i - 1])) / h[i]);

CREATE FUNCTION IF NOT EXISTS blindspot_hq_rank AS (h, c, r) ->
    blindspot_hq_step(h, c, r, if(c[18] = 0, 0, arrayFirstIndex(x -> x >= r, c)));

CREATE FUNCTION IF NOT EXISTS blindspot_hist_quantile AS (h, q) ->
    blindspot_hq_rank(h, arrayCumSum(h), q * arraySum(h));

-- Connection durations span milliseconds to days: a coarser bucket set for their distribution.
-- Bounds: 1ms 10ms 100ms 1s 10s 1min 10min 1h +Inf (9 buckets).
CREATE FUNCTION IF NOT EXISTS blindspot_duration_bounds_s AS () ->
    [0.001, 0.01, 0.1, 1., 10., 60., 600., 3600., inf];

CREATE FUNCTION IF NOT EXISTS blindspot_duration_bucket AS (ns) ->
    arrayMap(b -> toUInt64(b = arrayFirstIndex(x -> (ns / 1e9) <= x, blindspot_duration_bounds_s())),
             range(1, 10));
