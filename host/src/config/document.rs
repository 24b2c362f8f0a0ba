//! The TOML text as toml's spanned tree. A long file is parsed in pieces cut at its
//! `[[job]]` headers: toml holds every token and event of the text it parses at once (for
//! 100,000 jobs, about 300 MB beside a tree of 100), and a piece of a few hundred jobs
//! holds little. The pieces' tables are joined into the tree one parse of the whole text
//! gives, spans and all; anything the join could get wrong is parsed whole instead.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

/// Jobs per piece: small enough that a piece's tokens are little beside the tree, large
/// enough that a schedule of a few hundred jobs is one parse.
/// (In this crate's unit tests, a few, so that their schedules are read in pieces.)
const JOBS_PER_PIECE: usize = if cfg!(test) { 20 } else { 500 };

/// The tree `DeTable::parse_recoverable` gives, spans and all, with its errors.
pub(crate) fn tree(src: &str) -> (Spanned<DeTable<'_>>, Vec<toml::de::Error>) {
    tree_by(src, JOBS_PER_PIECE)
}

fn tree_by(src: &str, jobs_per_piece: usize) -> (Spanned<DeTable<'_>>, Vec<toml::de::Error>) {
    let mut jobs = DeArray::new();
    let (mut root, errors, _) = stream_by(src, jobs_per_piece, &mut |restart, job| {
        if restart {
            jobs = DeArray::new();
        }
        if let Some(job) = job {
            jobs.push(job);
        }
    });
    if errors.is_empty()
        && let Some(slot) = root.get_mut().get_mut("job")
        && let DeValue::Array(empty) = slot.get_mut()
    {
        *empty = jobs;
    }
    (root, errors)
}

/// Each `[[job]]` table goes to `on_job` as soon as its piece is parsed, and is dropped
/// there: the tree returned holds the rest, with `job` an empty array. `on_job(true, _)`
/// says the pieces were given up for a parse of the whole text: forget the jobs so far.
/// Also returns the ranges of the pieces, which hold the jobs in order.
pub(crate) fn stream<'i>(
    src: &'i str,
    on_job: &mut dyn FnMut(bool, Option<Spanned<DeValue<'i>>>),
) -> (Spanned<DeTable<'i>>, Vec<toml::de::Error>, Vec<Range<usize>>) {
    stream_by(src, JOBS_PER_PIECE, on_job)
}

fn stream_by<'i>(
    src: &'i str,
    jobs_per_piece: usize,
    on_job: &mut dyn FnMut(bool, Option<Spanned<DeValue<'i>>>),
) -> (Spanned<DeTable<'i>>, Vec<toml::de::Error>, Vec<Range<usize>>) {
    let cuts: Vec<usize> = job_headers(src).step_by(jobs_per_piece).collect();
    if cuts.len() >= 2 {
        let pieces: Vec<Range<usize>> = std::iter::once(0)
            .chain(cuts.iter().copied())
            .zip(cuts.iter().copied().chain([src.len()]))
            .map(|(a, b)| a..b)
            .collect();
        if let Some(root) = in_pieces(src, &pieces, on_job) {
            return (root, Vec::new(), pieces);
        }
        // A mistake, or a file the join does not handle: the whole parse reports it or reads it.
        on_job(true, None);
    }
    let (mut root, errors) = DeTable::parse_recoverable(src);
    if errors.is_empty()
        && let Some(slot) = root.get_mut().get_mut("job")
        && let DeValue::Array(items) = slot.get_mut()
    {
        for item in std::mem::replace(items, DeArray::new()) {
            on_job(false, Some(item));
        }
    }
    (root, errors, std::iter::once(0..src.len()).collect())
}

/// The table of the job named `name` in the piece `piece` of `src`, parsed again (to point
/// at one of its fields in a message).
pub(crate) fn job_in<'i>(src: &'i str, piece: Range<usize>, name: &str) -> Option<DeTable<'i>> {
    let from = piece.start;
    let (root, _) = DeTable::parse_recoverable(&src[piece]);
    let DeValue::Array(items) = root.into_inner().remove("job")?.into_inner() else { return None };
    items.into_iter().find_map(|item| {
        let DeValue::Table(t) = shift(item, from).into_inner() else { return None };
        (t.get("name")?.get_ref().as_str()? == name).then_some(t)
    })
}
/// Where each line that is a `[[job]]` header starts.
///
/// A line inside a multi-line string may look like one; a cut there leaves that string
/// unterminated in its piece, which fails to parse, and the whole text is parsed instead.
fn job_headers(src: &str) -> impl Iterator<Item = usize> + '_ {
    let mut start = 0;
    src.split_inclusive('\n').filter_map(move |line| {
        let at = start;
        start += line.len();
        let rest = line.trim_start_matches([' ', '\t']).strip_prefix("[[")?;
        let rest = rest.trim_start_matches([' ', '\t']).strip_prefix("job")?;
        let rest = rest.trim_start_matches([' ', '\t']).strip_prefix("]]")?;
        let rest = rest.trim_start_matches([' ', '\t']);
        (rest.is_empty() || rest.starts_with(['#', '\n', '\r'])).then_some(at)
    })
}

/// The pieces joined, their jobs to `on_job`; `None` when a piece has a mistake or the join
/// could differ from the whole parse.
fn in_pieces<'i>(
    src: &'i str,
    pieces: &[Range<usize>],
    on_job: &mut dyn FnMut(bool, Option<Spanned<DeValue<'i>>>),
) -> Option<Spanned<DeTable<'i>>> {
    type Key<'i> = Spanned<toml::de::DeString<'i>>;
    let mut entries: Vec<(Key<'i>, Option<Spanned<DeValue<'i>>>)> = Vec::new();
    // The whole parse spans an array of tables by its first header, the root by where it starts.
    let (mut first, mut root_span) = (None, 0..0);
    for (i, piece) in pieces.iter().enumerate() {
        let from = piece.start;
        let (parsed, errors) = DeTable::parse_recoverable(&src[piece.clone()]);
        if !errors.is_empty() {
            return None;
        }
        if i == 0 {
            root_span = parsed.span();
        }
        for (key, value) in parsed.into_inner() {
            let key = Spanned::new(shifted(key.span(), from), key.into_inner());
            if key.get_ref() == "job" {
                // Before the first cut, a `job` is an inline array or a `[job.x]` table,
                // which a later `[[job]]` would contradict.
                let span = shifted(value.span(), from);
                let DeValue::Array(items) = value.into_inner() else { return None };
                if i == 0 {
                    return None;
                }
                if first.is_none() {
                    first = Some(span);
                    entries.push((key, None));
                }
                for item in items {
                    on_job(false, Some(shift(item, from)));
                }
            } else if entries.iter().any(|(k, _)| k.get_ref() == key.get_ref()) {
                // A table written in two pieces (`[alerts]` before the jobs and
                // `[alerts.subscribers]` after them): let the whole parse judge it.
                return None;
            } else {
                entries.push((key, Some(shift(value, from))));
            }
        }
    }
    let mut jobs = Some(Spanned::new(first?, DeValue::Array(DeArray::new())));
    let mut root = DeTable::with_capacity(entries.len());
    for (key, value) in entries {
        root.insert(key, value.or_else(|| jobs.take())?);
    }
    Some(Spanned::new(root_span, root))
}

fn shifted(span: Range<usize>, by: usize) -> Range<usize> {
    span.start + by..span.end + by
}

/// `value` with every span moved `by` bytes on.
fn shift<'i>(value: Spanned<DeValue<'i>>, by: usize) -> Spanned<DeValue<'i>> {
    let span = shifted(value.span(), by);
    let value = match value.into_inner() {
        DeValue::Table(table) => {
            let mut out = DeTable::with_capacity(table.len());
            for (key, value) in table {
                out.insert(Spanned::new(shifted(key.span(), by), key.into_inner()), shift(value, by));
            }
            DeValue::Table(out)
        }
        DeValue::Array(items) => {
            let mut out = DeArray::new();
            for item in items {
                out.push(shift(item, by));
            }
            DeValue::Array(out)
        }
        scalar => scalar,
    };
    Spanned::new(span, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_PIECE: usize = JOBS_PER_PIECE;

    /// The two parses' trees and errors, printed with their spans, are the same.
    fn same_as_whole(src: &str) {
        let (ours, whole) =
            (format!("{:?}", tree_by(src, PER_PIECE)), format!("{:?}", DeTable::parse_recoverable(src)));
        let at = ours.bytes().zip(whole.bytes()).position(|(a, b)| a != b).unwrap_or(ours.len().min(whole.len()));
        let around = |s: &str| s.get(at.saturating_sub(200)..(at + 200).min(s.len())).unwrap_or("").to_owned();
        assert!(ours == whole, "differs at {at}:\n  pieces: …{}…\n  whole:  …{}…", around(&ours), around(&whole));
    }

    fn jobs(n: usize) -> String {
        let mut s = String::new();
        for i in 0..n {
            if i % 3 == 0 {
                s += &format!(
                    "[[job]]\nname = \"probe-{i}\"  # a comment\nevery = \"30s\"\nchecks = [{{ kind = \"db\" }}]\n\n"
                );
            } else {
                s += &format!(
                    "  [[ job ]] # indented\nname = \"probe-{i}\"\n[[job.checks]]\nkind = \"db\"\n[job.extra]\nx = {i}\n"
                );
            }
        }
        s
    }

    #[test]
    fn a_long_file_in_pieces_gives_the_whole_parse_tree_and_spans() {
        let src = format!(
            "version = 1\n[state]\nurl = \"sqlite:x.db\"\n\n{}[[policy]]\nname = \"p\"\non = [\"probe-1\"]\n[alerts]\nto = \"a@b\"\n",
            jobs(170)
        );
        assert_eq!(job_headers(&src).count(), 170);
        same_as_whole(&src);
    }

    #[test]
    fn what_the_join_cannot_judge_is_parsed_whole() {
        let cases = [
            // A table written before and after the jobs.
            format!("version = 1\n[alerts]\nto = \"a@b\"\n{}[alerts.subscribers]\nquery = \"q\"\n", jobs(120)),
            // The same table twice: a mistake the whole parse names.
            format!("[alerts]\nto = \"a@b\"\n{}[alerts]\nto = \"c@d\"\n", jobs(120)),
            // A `job` before the first header that a header contradicts.
            format!("job = [{{ name = \"inline\" }}]\n{}", jobs(120)),
            // A header inside a multi-line string.
            format!("{}[[job]]\nname = \"s\"\nnote = \"\"\"\n[[job]]\n\"\"\"\n{}", jobs(19), jobs(70)),
            // A syntax mistake far into the file.
            format!("{}[[job]]\nname = = 1\n{}", jobs(90), jobs(90)),
        ];
        for src in &cases {
            same_as_whole(src);
        }
        assert!(!tree_by(&cases[1], PER_PIECE).1.is_empty() && !tree_by(&cases[4], PER_PIECE).1.is_empty());
    }

    /// A schedule of `n` probes, the `i`th with the lines `extra(i)`.
    fn probes(n: usize, extra: impl Fn(usize) -> String) -> String {
        let mut s = String::from("version = 1\n[targets]\ndatabase = \"sqlite://app.db\"\n");
        for i in 0..n {
            s += &format!("[[job]]\nname = \"p{i}\"\nevery = \"30s\"\ntask = \"probe\"\n{}", extra(i));
        }
        s
    }

    fn read(src: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        crate::config::parse(src, std::path::Path::new("schedules.toml"), &|_| None)
    }

    fn line_of(src: &str, text: &str) -> usize {
        src[..src.find(text).unwrap()].matches('\n').count() + 1
    }

    #[test]
    fn jobs_read_in_pieces_keep_their_order_and_the_places_of_their_mistakes() {
        let check = |i: usize| match i {
            57 => "checks = [{ name = \"db\", kind = \"db\", database = \"nope\" }]\n".to_owned(),
            _ => "checks = [{ name = \"db\", kind = \"db\" }]\n".to_owned(),
        };
        let src = probes(70, check);
        assert!(job_headers(&src).count() > 3 * PER_PIECE, "the schedule is read in pieces");
        let errors = read(&src).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "job \"p57\".checks[0].database");
        assert_eq!(errors[0].line, line_of(&src, "database = \"nope\""));
        let ok = read(&probes(70, |_| check(0))).unwrap();
        let names: Vec<&str> = ok.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, (0..70).map(|i| format!("p{i}")).collect::<Vec<_>>());
        // A name used in two pieces.
        let twice = probes(70, check).replace("name = \"p65\"", "name = \"p3\"");
        let errors = read(&twice).unwrap_err().0;
        let dup = errors.iter().find(|e| e.message.starts_with("duplicate job name")).unwrap();
        let second = twice[..twice.rfind("name = \"p3\"").unwrap()].matches('\n').count() + 1;
        assert_eq!(dup.line, second, "{dup}");
        assert!(dup.message.contains(&format!("first defined on line {}", line_of(&twice, "name = \"p3\""))), "{dup}");
    }

    #[test]
    fn a_syntax_mistake_in_a_late_piece_is_reported_alone_as_in_a_whole_parse() {
        let src = probes(70, |i| match i {
            5 => "checks = [{ name = \"db\", kind = \"db\", database = \"nope\" }]\n".to_owned(),
            66 => "checks = [{ name = \"db\", kind = = \"db\" }]\n".to_owned(),
            _ => "checks = [{ name = \"db\", kind = \"db\" }]\n".to_owned(),
        });
        let errors = read(&src).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].field.as_str()), (line_of(&src, "kind = = "), ""));
    }
}
