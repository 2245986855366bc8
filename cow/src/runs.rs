//! Runs of pages, and painting layers' runs on top of each other.

use std::collections::BTreeMap;

/// Page size of guest memory (4 KiB; shmem THP is off on these hosts).
pub const PAGE_SIZE: u64 = 4096;

/// `count` pages from page index `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    /// First page index (byte offset / [`PAGE_SIZE`]).
    pub start: u64,
    /// Number of pages.
    pub count: u64,
}

impl PageRun {
    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.start + self.count
    }
}

/// Where each page of a view comes from: for every run painted by a layer, the layer's index;
/// pages no layer paints come from the base. Later paints win.
#[derive(Debug, Default)]
pub(crate) struct Paint {
    /// start page -> (end page, layer index); non-overlapping.
    spans: BTreeMap<u64, (u64, usize)>,
}

impl Paint {
    /// Paints `run` with `layer`, over whatever was there.
    pub(crate) fn paint(&mut self, run: PageRun, layer: usize) {
        let (start, end) = (run.start, run.end());
        if start >= end {
            return;
        }
        // Cut the span that straddles `start`, if any.
        if let Some((&s, &(e, l))) = self.spans.range(..start).next_back() {
            if e > start {
                self.spans.insert(s, (start, l));
                if e > end {
                    self.spans.insert(end, (e, l));
                }
            }
        }
        // Remove or trim every span starting inside the run.
        let inside: Vec<u64> = self.spans.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some((e, l)) = self.spans.remove(&s) {
                if e > end {
                    self.spans.insert(end, (e, l));
                }
            }
        }
        self.spans.insert(start, (end, layer));
    }

    /// The painted runs in address order, with adjacent runs of one layer merged.
    pub(crate) fn runs(&self) -> Vec<(PageRun, usize)> {
        let mut out: Vec<(PageRun, usize)> = Vec::with_capacity(self.spans.len());
        for (&start, &(end, layer)) in &self.spans {
            match out.last_mut() {
                Some((last, l)) if *l == layer && last.end() == start => last.count += end - start,
                _ => out.push((
                    PageRun {
                        start,
                        count: end - start,
                    },
                    layer,
                )),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, count: u64) -> PageRun {
        PageRun { start, count }
    }

    #[test]
    fn later_layers_win_and_runs_merge() {
        let mut paint = Paint::default();
        paint.paint(run(0, 10), 0);
        paint.paint(run(4, 2), 1);
        paint.paint(run(20, 5), 1);
        paint.paint(run(8, 14), 2);
        assert_eq!(
            paint.runs(),
            vec![
                (run(0, 4), 0),
                (run(4, 2), 1),
                (run(6, 2), 0),
                (run(8, 14), 2),
                (run(22, 3), 1),
            ]
        );
        let mut paint = Paint::default();
        paint.paint(run(0, 4), 0);
        paint.paint(run(4, 4), 0);
        assert_eq!(paint.runs(), vec![(run(0, 8), 0)]);
    }

    #[test]
    fn a_paint_inside_one_span_splits_it() {
        let mut paint = Paint::default();
        paint.paint(run(0, 100), 0);
        paint.paint(run(10, 1), 1);
        assert_eq!(
            paint.runs(),
            vec![(run(0, 10), 0), (run(10, 1), 1), (run(11, 89), 0)]
        );
    }
}
