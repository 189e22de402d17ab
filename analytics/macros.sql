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
    list_sort(list_intersect(a, b));
CREATE OR REPLACE TEMP MACRO to_decode_clock(t, offset_ns) AS
    t - offset_ns;
CREATE OR REPLACE TEMP MACRO duration_words(ns) AS
    CASE WHEN abs(ns) >= 1000000000 THEN printf('%.2f s', ns / 1e9)
         WHEN abs(ns) >= 1000000 THEN printf('%.1f ms', ns / 1e6)
         WHEN abs(ns) >= 1000 THEN printf('%.1f us', ns / 1e3)
         ELSE printf('%d ns', CAST(ns AS BIGINT)) END;
