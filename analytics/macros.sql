-- Building blocks shared by the analyses (Perfetto's interval_intersect habit): interval and
-- page-set predicates written once, so no analysis hand-writes an overlap join condition.
--
-- intervals_overlap(a_start, a_end, b_start, b_end): half-open [start, end) intervals intersect.
-- page_ranges_overlap(a_lo, a_hi, b_lo, b_hi): the cheap pre-filter on page_lo/page_hi; an
--   equi-join on the resource plus this range test lets DuckDB prune before the exact test.
-- pages_intersect(a, b): the exact test on page lists (list_has_any: 2.5x faster than
--   len(list_intersect(...)) > 0 on 1,000-page lists, measured; both are ~0.2-0.5 ms per pair at
--   that size, so analyses apply every cheap time/range condition first, see page_set_overlap).
-- page_set_overlap(a_lo, a_hi, a, b_lo, b_hi, b): pre-filter + exact test; the CASE makes DuckDB
--   run the list test only on the rows that passed the range test.
-- to_decode_clock(t, offset): a time on a prefill host moved onto the decode host's clock, where
--   offset = prefill clock - decode clock for the same instant (skew_bounds.sql).
-- duration_words(ns): a duration for a person ('3.49 s', '4.5 ms', '12.0 us', '800 ns').
CREATE OR REPLACE TEMP MACRO intervals_overlap(a_start, a_end, b_start, b_end) AS
    a_start < b_end AND b_start < a_end;
CREATE OR REPLACE TEMP MACRO page_ranges_overlap(a_lo, a_hi, b_lo, b_hi) AS
    a_lo <= b_hi AND b_lo <= a_hi;
CREATE OR REPLACE TEMP MACRO pages_intersect(a, b) AS
    list_has_any(a, b);
CREATE OR REPLACE TEMP MACRO page_set_overlap(a_lo, a_hi, a, b_lo, b_hi, b) AS
    CASE WHEN a_lo <= b_hi AND b_lo <= a_hi THEN list_has_any(a, b) ELSE false END;
CREATE OR REPLACE TEMP MACRO sorted_intersection(a, b) AS
    CASE WHEN len(a) * len(b) <= 4096 THEN list_sort(list_distinct(list_filter(a, lambda x: list_contains(b, x))))
         ELSE list_sort(list_intersect(a, b)) END;
CREATE OR REPLACE TEMP MACRO to_decode_clock(t, offset_ns) AS
    t - offset_ns;
CREATE OR REPLACE TEMP MACRO duration_words(ns) AS
    CASE WHEN abs(ns) >= 1000000000 THEN printf('%.2f s', ns / 1e9)
         WHEN abs(ns) >= 1000000 THEN printf('%.1f ms', ns / 1e6)
         WHEN abs(ns) >= 1000 THEN printf('%.1f us', ns / 1e3)
         ELSE printf('%d ns', CAST(ns AS BIGINT)) END;
--
-- Engine-specific forms, one macro each (an engine without DuckDB's list lambdas or unnest gives
-- its own body for the same name; the analyses only call the name):
-- time_buckets(start_ns, end_ns): the 1 s buckets (start_ns // 1e9 .. end_ns // 1e9) an interval
--   spans, as a list to unnest: the interval side of a range join on time made an equi-join on
--   the bucket (the point side lies in one bucket, so a pair is met once).
-- early_layers(read_start, read_offsets, done_start, done_offsets): the layers (0-based, sorted)
--   read before their copy was done: read_start + read_offsets[layer] < done_start +
--   done_offsets[layer], over the layers both lists have.
-- layer_times(layers, start, offsets): start + offsets[layer] for each of `layers`.
-- layer_gaps(layers, read_start, read_offsets, done_start, done_offsets): done - read per layer.
-- list_without(l, x): l without x (and without NULLs); drop_nulls(l): l without NULLs.
CREATE OR REPLACE TEMP MACRO time_buckets(start_ns, end_ns) AS
    range(start_ns // 1000000000, end_ns // 1000000000 + 1);
CREATE OR REPLACE TEMP MACRO early_layers(read_start, read_offsets, done_start, done_offsets) AS
    list_filter(range(least(len(done_offsets), len(read_offsets))),
                lambda i: read_start + read_offsets[i + 1] < done_start + done_offsets[i + 1]);
CREATE OR REPLACE TEMP MACRO layer_times(layers, start_ns, offsets) AS
    list_transform(layers, lambda i: start_ns + offsets[i + 1]);
CREATE OR REPLACE TEMP MACRO layer_gaps(layers, read_start, read_offsets, done_start, done_offsets) AS
    list_transform(layers, lambda i: (done_start + done_offsets[i + 1]) - (read_start + read_offsets[i + 1]));
CREATE OR REPLACE TEMP MACRO list_without(l, x) AS
    list_filter(l, lambda s: s <> x);
CREATE OR REPLACE TEMP MACRO drop_nulls(l) AS
    list_filter(l, lambda s: s IS NOT NULL);
