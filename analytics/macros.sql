-- Building blocks shared by the analyses (Perfetto's interval_intersect habit): interval and
-- page-set predicates written once, so no analysis hand-writes an overlap join condition.
--
-- intervals_overlap(a_start, a_end, b_start, b_end): half-open [start, end) intervals intersect.
-- page_ranges_overlap(a_lo, a_hi, b_lo, b_hi): the cheap pre-filter on page_lo/page_hi; an
--   equi-join on the resource plus this range test lets DuckDB prune before the exact test.
-- pages_intersect(a, b): the exact test on sorted page lists.
-- page_set_overlap(a_lo, a_hi, a, b_lo, b_hi, b): pre-filter + exact test, in that order.
-- to_decode_clock(t, offset): a time on a prefill host moved onto the decode host's clock, where
--   offset = prefill clock - decode clock for the same instant (skew_bounds.sql).
CREATE OR REPLACE TEMP MACRO intervals_overlap(a_start, a_end, b_start, b_end) AS
    a_start < b_end AND b_start < a_end;
CREATE OR REPLACE TEMP MACRO page_ranges_overlap(a_lo, a_hi, b_lo, b_hi) AS
    a_lo <= b_hi AND b_lo <= a_hi;
CREATE OR REPLACE TEMP MACRO pages_intersect(a, b) AS
    len(list_intersect(a, b)) > 0;
CREATE OR REPLACE TEMP MACRO page_set_overlap(a_lo, a_hi, a, b_lo, b_hi, b) AS
    a_lo <= b_hi AND b_lo <= a_hi AND len(list_intersect(a, b)) > 0;
CREATE OR REPLACE TEMP MACRO sorted_intersection(a, b) AS
    list_sort(list_intersect(a, b));
CREATE OR REPLACE TEMP MACRO to_decode_clock(t, offset_ns) AS
    t - offset_ns;
