//! A cumulative histogram in Prometheus' sense: counts of observations at
//! or under each bound, their number and their sum. Pure: the caller
//! measures; this only counts. Used for job run times (ms) and storage
//! latencies (µs), each with bounds of its own.

#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds, rising, in the unit of the observations.
    pub bounds: &'static [u64],
    /// `buckets[i]`: observations at or under `bounds[i]`.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds rise");
        Histogram {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum: 0,
        }
    }

    pub fn observe(&mut self, value: u64) {
        // Bounds rise: every bucket from the first that holds `value` on.
        let first = self.bounds.partition_point(|b| *b < value);
        for n in &mut self.buckets[first..] {
            *n += 1;
        }
        self.count += 1;
        self.sum = self.sum.saturating_add(value);
    }

    /// The Prometheus text lines of this histogram named `name` (its unit
    /// last), with `labels` (`key="value",...` or empty).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        use std::fmt::Write;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_render_as_prometheus_reads_them() {
        let mut h = Histogram::new(&[10, 100, 1000]);
        for v in [5, 10, 60, 5000] {
            h.observe(v);
        }
        assert_eq!(h.buckets, [2, 3, 3]);
        assert_eq!((h.count, h.sum), (4, 5075));
        let mut out = String::new();
        h.render("x_ms", "", &mut out);
        assert!(out.contains("x_ms_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_ms_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_ms_count 4\n"), "{out}");
    }
}
