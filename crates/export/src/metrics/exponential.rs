//! A base-2 exponential histogram (OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=
//! base2_exponential_bucket_histogram), as the SDK specification has it: buckets
//! (base^i, base^(i+1)] with base = 2^(2^-scale), at most MAX_BUCKETS of them, starting at
//! MAX_SCALE and halving the resolution whenever the values seen need more buckets.

pub const MAX_BUCKETS: usize = 160;
pub const MAX_SCALE: i32 = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Exponential {
    pub scale: i32,
    /// Values that were zero (a duration below the clock's resolution).
    pub zero_count: u64,
    /// The index of `counts[0]`.
    pub offset: i32,
    pub counts: Vec<u64>,
}

impl Default for Exponential {
    fn default() -> Self {
        Exponential { scale: MAX_SCALE, zero_count: 0, offset: 0, counts: Vec::new() }
    }
}

/// The bucket of a positive `value` at `scale`: the i with base^i < value <= base^(i+1).
fn index(value: f64, scale: i32) -> i32 {
    ((value.log2() * 2f64.powi(scale)).ceil() - 1.0) as i32
}

impl Exponential {
    pub fn record(&mut self, value: f64) {
        if value <= 0.0 || !value.is_finite() {
            self.zero_count += 1;
            return;
        }
        let mut at = index(value, self.scale);
        if self.counts.is_empty() {
            self.offset = at;
            self.counts.push(1);
            return;
        }
        // Halve the resolution until the new bucket and the old ones fit.
        loop {
            let low = self.offset.min(at);
            let high = (self.offset + self.counts.len() as i32 - 1).max(at);
            if (high - low + 1) as usize <= MAX_BUCKETS {
                break;
            }
            self.downscale();
            at = index(value, self.scale);
        }
        if at < self.offset {
            let grow = (self.offset - at) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = at;
        }
        let i = (at - self.offset) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
    }

    /// One scale down: each pair of buckets becomes one.
    fn downscale(&mut self) {
        let new_offset = self.offset >> 1;
        let mut merged: Vec<u64> = Vec::with_capacity(self.counts.len() / 2 + 1);
        for (i, &n) in self.counts.iter().enumerate() {
            let at = ((self.offset + i as i32) >> 1) - new_offset;
            if merged.len() <= at as usize {
                merged.resize(at as usize + 1, 0);
            }
            merged[at as usize] += n;
        }
        self.scale -= 1;
        self.offset = new_offset;
        self.counts = merged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_bucket_and_the_scale_drops_as_the_range_grows() {
        let mut e = Exponential::default();
        e.record(1.0);
        e.record(0.0);
        assert_eq!((e.scale, e.zero_count, e.counts.iter().sum::<u64>()), (MAX_SCALE, 1, 1));
        // 1 ms to 10 s is 13.3 powers of two: 160 buckets hold it at scale 3 (8 per power).
        for v in [0.001, 0.01, 0.1, 1.0, 10.0] {
            e.record(v);
        }
        assert_eq!(e.scale, 3, "{e:?}");
        assert!(e.counts.len() <= MAX_BUCKETS);
        assert_eq!(e.counts.iter().sum::<u64>(), 6);
        // Every value is in (base^i, base^(i+1)] of the bucket it was counted in.
        let base = 2f64.powf(2f64.powi(-e.scale));
        for v in [0.001, 0.01, 0.1, 1.0, 10.0] {
            let i = index(v, e.scale);
            assert!(base.powi(i) < v * (1.0 + 1e-12) && v <= base.powi(i + 1) * (1.0 + 1e-12));
            assert!(e.counts[(i - e.offset) as usize] > 0);
        }
    }
}
