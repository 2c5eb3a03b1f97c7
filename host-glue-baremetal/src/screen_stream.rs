//! `screen_lines=1`: the PC's text screen streamed on the host console as
//! it changes, a line at a time, the way a terminal would have scrolled
//! it: [`new_lines`] finds how far the screen scrolled since the last look
//! and which rows are new or rewritten, so a Linux console scrolling its
//! log prints each line once.

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

/// The rows of `now` to print, given `before` (the screen at the last
/// look, trailing blanks cut): if `now` is `before` scrolled up by `k`
/// rows (the largest `k` that fits, rows compared whole), the rows that
/// differ from that scrolled picture; otherwise every row that differs
/// from `before`. Blank rows are left out. Rows come as (row, text).
pub fn new_lines(before: &[String], now: &[String]) -> Vec<(usize, String)> {
    let rows = now.len();
    let scrolled_by = (1..rows)
        .rev()
        .filter(|k| before.len() == rows && rows - k >= 2)
        .find(|&k| now[..rows - k] == before[k..])
        .unwrap_or(0);
    now.iter()
        .enumerate()
        .filter(|(i, line)| {
            let old = before
                .get(i + scrolled_by)
                .map(String::as_str)
                .unwrap_or("");
            !line.is_empty() && (i + scrolled_by >= rows || line.as_str() != old)
        })
        .map(|(i, l)| (i, l.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn v(rows: &[&str]) -> Vec<String> {
        rows.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_scroll_prints_only_the_new_bottom_lines() {
        let before = v(&["a", "b", "c", "d"]);
        let now = v(&["c", "d", "e", "f"]);
        assert_eq!(
            new_lines(&before, &now),
            vec![(2, "e".to_string()), (3, "f".to_string())]
        );
    }

    #[test]
    fn rewritten_rows_and_a_first_look() {
        let before = v(&["a", "", "c", ""]);
        let now = v(&["a", "boot:", "c", ""]);
        assert_eq!(new_lines(&before, &now), vec![(1, "boot:".to_string())]);
        assert_eq!(
            new_lines(&[], &now),
            vec![
                (0, "a".to_string()),
                (1, "boot:".to_string()),
                (2, "c".to_string())
            ]
        );
        assert!(new_lines(&now, &now).is_empty());
    }
}
