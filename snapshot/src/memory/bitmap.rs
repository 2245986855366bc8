//! One bit per page of a layout.

use serde::{Deserialize, Serialize};

/// A set of pages: bit `i` is page `i` of the layout (page = image offset / 4096).
///
/// Filled by the VMM from KVM's dirty log (`KVM_GET_DIRTY_LOG` gives one bitmap per memory
/// slot: OR it in with [`PageBitmap::or_words_at`] at the slot's first page) and from its own
/// device-write bitmap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBitmap", into = "RawBitmap")]
pub struct PageBitmap {
    pages: u64,
    words: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct RawBitmap {
    pages: u64,
    words: Vec<u64>,
}

/// A serialized bitmap whose word count does not match its page count, or with bits set past
/// its last page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("page bitmap of {pages} pages has {words} words or bits past its end")]
pub struct BitmapError {
    pages: u64,
    words: usize,
}

impl TryFrom<RawBitmap> for PageBitmap {
    type Error = BitmapError;
    fn try_from(raw: RawBitmap) -> Result<Self, BitmapError> {
        let err = BitmapError {
            pages: raw.pages,
            words: raw.words.len(),
        };
        if raw.words.len() as u64 != raw.pages.div_ceil(64) {
            return Err(err);
        }
        let tail = raw.pages % 64;
        if tail != 0 && raw.words.last().is_some_and(|w| w >> tail != 0) {
            return Err(err);
        }
        Ok(PageBitmap {
            pages: raw.pages,
            words: raw.words,
        })
    }
}

impl From<PageBitmap> for RawBitmap {
    fn from(b: PageBitmap) -> Self {
        RawBitmap {
            pages: b.pages,
            words: b.words,
        }
    }
}

impl PageBitmap {
    /// An empty set over `pages` pages.
    pub fn new(pages: u64) -> Self {
        PageBitmap {
            pages,
            words: vec![0; pages.div_ceil(64) as usize],
        }
    }

    /// A full set over `pages` pages.
    pub fn full(pages: u64) -> Self {
        let mut b = Self::new(pages);
        b.set_range(0, pages);
        b
    }

    /// Pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether page `page` is in the set (false past the end).
    pub fn get(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// Adds page `page`; ignored past the end.
    pub fn set(&mut self, page: u64) {
        if page < self.pages {
            self.words[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    /// Adds pages `first .. first + count`, clipped to the end.
    pub fn set_range(&mut self, first: u64, count: u64) {
        let end = first.saturating_add(count).min(self.pages);
        for page in first..end {
            self.set(page);
        }
    }

    /// ORs in `words` (bit `j` of word `k` = page `first_page + 64 * k + j`), e.g. a memory
    /// slot's `KVM_GET_DIRTY_LOG` bitmap; bits past the end are ignored.
    pub fn or_words_at(&mut self, first_page: u64, words: &[u64]) {
        for (k, &w) in words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let j = w.trailing_zeros() as u64;
                self.set(first_page + 64 * k as u64 + j);
                w &= w - 1;
            }
        }
    }

    /// ORs `other` into this set (the smaller page count wins).
    pub fn or(&mut self, other: &PageBitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.clear_tail();
    }

    fn clear_tail(&mut self) {
        let tail = self.pages % 64;
        if tail != 0 {
            if let Some(w) = self.words.last_mut() {
                *w &= (1 << tail) - 1;
            }
        }
    }

    /// Number of pages in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The raw words, bit `j` of word `k` being page `64 * k + j`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Runs of consecutive set pages, as `(first, count)`, ascending.
    pub fn runs(&self) -> Runs<'_> {
        Runs {
            bitmap: self,
            next: 0,
        }
    }

    fn next_set(&self, from: u64) -> Option<u64> {
        let mut k = (from / 64) as usize;
        let mut w = *self.words.get(k)? & (!0u64 << (from % 64));
        loop {
            if w != 0 {
                return Some(k as u64 * 64 + u64::from(w.trailing_zeros()));
            }
            k += 1;
            w = *self.words.get(k)?;
        }
    }

    fn next_clear(&self, from: u64) -> u64 {
        let mut k = (from / 64) as usize;
        let Some(&first) = self.words.get(k) else {
            return self.pages;
        };
        let mut w = !first & (!0u64 << (from % 64));
        loop {
            if w != 0 {
                return (k as u64 * 64 + u64::from(w.trailing_zeros())).min(self.pages);
            }
            k += 1;
            match self.words.get(k) {
                Some(&x) => w = !x,
                None => return self.pages,
            }
        }
    }
}

/// Iterator over the runs of a [`PageBitmap`].
#[derive(Debug)]
pub struct Runs<'a> {
    bitmap: &'a PageBitmap,
    next: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        let first = self.bitmap.next_set(self.next)?;
        let end = self.bitmap.next_clear(first);
        self.next = end;
        Some((first, end - first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_exactly_the_set_pages() {
        let mut b = PageBitmap::new(200);
        b.set_range(3, 5);
        b.set(64);
        b.set_range(127, 3);
        b.set(199);
        let runs: Vec<_> = b.runs().collect();
        assert_eq!(runs, vec![(3, 5), (64, 1), (127, 3), (199, 1)]);
        assert_eq!(b.count(), 10);
        assert_eq!(
            PageBitmap::full(130).runs().collect::<Vec<_>>(),
            vec![(0, 130)]
        );
    }

    #[test]
    fn dirty_log_words_land_at_the_slot_offset() {
        let mut b = PageBitmap::new(256);
        b.or_words_at(100, &[0b101, 1 << 63]);
        assert!(b.get(100) && b.get(102) && b.get(100 + 64 + 63));
        assert_eq!(b.count(), 3);
    }

    #[test]
    fn a_bitmap_with_bits_past_its_end_is_refused() {
        let raw = RawBitmap {
            pages: 3,
            words: vec![0b1000],
        };
        assert!(PageBitmap::try_from(raw).is_err());
        let raw = RawBitmap {
            pages: 65,
            words: vec![0],
        };
        assert!(PageBitmap::try_from(raw).is_err());
    }
}
