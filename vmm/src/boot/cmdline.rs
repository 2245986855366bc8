//! The kernel command line as the guest gets it: the user's line with what Zygote adds.
//!
//! Linux reads kernel parameters up to the first `--` word and hands every word after it to
//! init (`parse_args` in `kernel/params.c`, called from `start_kernel`). Zygote's additions
//! (the `virtio_mmio.device=` entries) are kernel parameters, so they go before that word, and
//! the user's init arguments after it stay exactly as given.

/// Builds the final command line: `user` with `additions` inserted before its first `--` word
/// (appended when there is none), one space between words. The part of `user` from the `--`
/// on is kept byte for byte.
pub(crate) fn with_additions<S: AsRef<str>>(user: &str, additions: &[S]) -> String {
    if additions.is_empty() {
        return user.to_owned();
    }
    let (params, init_args) = user.split_at(dashes_at(user).unwrap_or(user.len()));
    let mut line = params.trim_end().to_owned();
    for addition in additions {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(addition.as_ref());
    }
    if !init_args.is_empty() {
        line.push(' ');
        line.push_str(init_args);
    }
    line
}

/// Byte offset of the first `--` word, split into words the way Linux's `next_arg` does:
/// spaces separate words except inside double quotes, and a word's leading quote (and then
/// its trailing one) are not part of it, so `"--"` is a `--` word too.
fn dashes_at(line: &str) -> Option<usize> {
    words(line).find_map(|(start, word)| {
        let unquoted = match word.strip_prefix('"') {
            Some(rest) => rest.strip_suffix('"').unwrap_or(rest),
            None => word,
        };
        (unquoted == "--").then_some(start)
    })
}

/// The words of `line` with their byte offsets.
fn words(line: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = 0;
    std::iter::from_fn(move || {
        let bytes = line.as_bytes();
        let start = rest
            + bytes[rest..]
                .iter()
                .position(|b| !b.is_ascii_whitespace())?;
        let mut in_quote = false;
        let mut end = start;
        while end < bytes.len() && (in_quote || !bytes[end].is_ascii_whitespace()) {
            in_quote ^= bytes[end] == b'"';
            end += 1;
        }
        rest = end;
        Some((start, &line[start..end]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: &str = "virtio_mmio.device=4K@0xd0000000:5";

    fn add(user: &str) -> String {
        with_additions(user, &[DEVICE])
    }

    #[test]
    fn device_entries_land_before_the_init_arguments() {
        assert_eq!(
            add("console=ttyS0 init=/bin/sh -- -c true"),
            "console=ttyS0 init=/bin/sh virtio_mmio.device=4K@0xd0000000:5 -- -c true"
        );
    }

    #[test]
    fn without_dashes_the_entries_are_appended() {
        assert_eq!(add("console=ttyS0"), format!("console=ttyS0 {DEVICE}"));
        assert_eq!(add("console=ttyS0  "), format!("console=ttyS0 {DEVICE}"));
        assert_eq!(add(""), DEVICE);
        assert_eq!(add("   "), DEVICE);
    }

    #[test]
    fn dashes_at_the_very_end_or_start_stay_after_the_entries() {
        assert_eq!(
            add("console=ttyS0 --"),
            format!("console=ttyS0 {DEVICE} --")
        );
        assert_eq!(add("--"), format!("{DEVICE} --"));
        assert_eq!(add("-- -c true"), format!("{DEVICE} -- -c true"));
    }

    #[test]
    fn only_the_first_of_several_dashes_counts_and_init_args_stay_intact() {
        assert_eq!(
            add("a=1 -- b  -- \"c  d\" --"),
            format!("a=1 {DEVICE} -- b  -- \"c  d\" --")
        );
        let two = with_additions("quiet -- x", &["one=1", "two=2"]);
        assert_eq!(two, "quiet one=1 two=2 -- x");
    }

    #[test]
    fn dashes_inside_a_word_or_quoted_value_are_not_the_separator() {
        assert_eq!(add("a=-- b--"), format!("a=-- b-- {DEVICE}"));
        assert_eq!(
            add("a=\"x -- y\" --c"),
            format!("a=\"x -- y\" --c {DEVICE}")
        );
        // Linux strips a word's quotes before comparing, so a quoted `--` is the separator.
        assert_eq!(add("a \"--\" b"), format!("a {DEVICE} \"--\" b"));
    }

    #[test]
    fn nothing_added_keeps_the_line_as_given() {
        let none: [&str; 0] = [];
        assert_eq!(with_additions(" a -- b ", &none), " a -- b ");
    }
}
