//! Classes into tasks, and seeded batching.
//!
//! A task is a sorted set of global class indices. Heads predict *local*
//! labels: the position of a class within its task ([`local_label`]), so task
//! 5–9's head has outputs 0..5.

use super::Split;
use crate::rng::Rng;
use crate::{Error, Result};

/// Class indices above this are refused: they would only come from a typo
/// such as `0-40000`, and would allocate a huge list.
pub const MAX_CLASS: u32 = 65_535;

/// Parse a class list such as `0-4`, `5,7,9` or `0-2,7` into sorted,
/// deduplicated class indices.
pub fn parse_classes(s: &str) -> Result<Vec<u32>> {
    let bad = |why: &str| Error::Config(format!("bad class list '{s}': {why} (expected e.g. 0-4 or 5,7,9)"));
    if s.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    let mut classes = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (parse_class(a, &bad)?, parse_class(b, &bad)?),
            None => (parse_class(part, &bad)?, parse_class(part, &bad)?),
        };
        if lo > hi {
            return Err(bad(&format!("range {lo}-{hi} is backwards")));
        }
        classes.extend(lo..=hi);
    }
    classes.sort_unstable();
    classes.dedup();
    Ok(classes)
}

fn parse_class(s: &str, bad: &impl Fn(&str) -> Error) -> Result<u32> {
    let s = s.trim();
    let v: u32 = s.parse().map_err(|_| bad(&format!("'{s}' is not a class index")))?;
    if v > MAX_CLASS {
        return Err(bad(&format!("class {v} is above the limit {MAX_CLASS}")));
    }
    Ok(v)
}

/// Format classes compactly, the inverse of [`parse_classes`]: `[0,1,2,7,8]`
/// → `0-2,7,8` (runs of three or more become ranges).
pub fn format_classes(classes: &[u32]) -> String {
    let mut sorted = classes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        match j - i {
            0 => parts.push(sorted[i].to_string()),
            1 => parts.extend([sorted[i].to_string(), sorted[j].to_string()]),
            _ => parts.push(format!("{}-{}", sorted[i], sorted[j])),
        }
        i = j + 1;
    }
    parts.join(",")
}

/// Parse tasks separated by `;`, e.g. `0-4;5-9`. Tasks may not share a class:
/// each class belongs to exactly one head.
pub fn parse_tasks(s: &str) -> Result<Vec<Vec<u32>>> {
    let tasks = s.split(';').map(parse_classes).collect::<Result<Vec<_>>>()?;
    check_disjoint(&tasks)?;
    Ok(tasks)
}

fn check_disjoint(tasks: &[Vec<u32>]) -> Result<()> {
    for (a, ta) in tasks.iter().enumerate() {
        for (b, tb) in tasks.iter().enumerate().skip(a + 1) {
            if let Some(c) = ta.iter().find(|c| tb.contains(c)) {
                let msg =
                    format!("class {c} is in both task {} and task {}: tasks must not overlap", a + 1, b + 1);
                return Err(Error::Config(msg));
            }
        }
    }
    Ok(())
}

/// Classes as the command line takes them: ids and ranges (`0-4`, `0,2,7`;
/// see [`parse_classes`]) and class names (`cat,dog`), mixed as the user
/// likes. Names are resolved against a data set's class names by
/// [`ClassList::resolve`], once the data is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassList(pub Vec<ClassRef>);

/// One entry of a [`ClassList`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassRef {
    /// A number or a range of numbers.
    Ids(Vec<u32>),
    /// A class's name (an image folder's class folder, a line of `classes.txt`).
    Name(String),
}

impl std::str::FromStr for ClassList {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.trim().is_empty() {
            return parse_classes(s).map(|ids| ClassList(vec![ClassRef::Ids(ids)]));
        }
        let numeric = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        s.split(',')
            .map(str::trim)
            .map(|part| match part.split_once('-') {
                // Digits (or digits-digits) are ids; anything else is a name,
                // so a name such as `t-shirt` is not read as a range.
                _ if numeric(part) => parse_classes(part).map(ClassRef::Ids),
                Some((a, b)) if numeric(a.trim()) && numeric(b.trim()) => {
                    parse_classes(part).map(ClassRef::Ids)
                }
                _ if part.is_empty() => parse_classes(s).map(ClassRef::Ids),
                _ => Ok(ClassRef::Name(part.to_string())),
            })
            .collect::<Result<_>>()
            .map(ClassList)
    }
}

impl ClassList {
    /// The sorted, deduplicated class ids, names looked up in `names` (the
    /// data set's class names, index = id); an unknown name is an error
    /// listing the known ones. `data` names the data set in that message.
    pub fn resolve(&self, names: &[String], data: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for r in &self.0 {
            match r {
                ClassRef::Ids(v) => ids.extend(v),
                ClassRef::Name(n) => match names.iter().position(|k| k == n) {
                    Some(i) => ids.push(i as u32),
                    None => {
                        return Err(Error::Config(format!(
                            "--classes: no class named '{n}' in {data}; its classes are {}",
                            names.join(", ")
                        )))
                    }
                },
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// Tasks as the command line takes them (`0-4;5-9`; see [`parse_tasks`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskList(pub Vec<Vec<u32>>);

impl std::str::FromStr for TaskList {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_tasks(s).map(TaskList)
    }
}

/// A named protocol over classes `0..num_classes`: `two-task` = first half,
/// second half; `splitN` = N equal contiguous groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    TwoTask,
    Split(usize),
}

impl std::str::FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "two-task" {
            return Ok(Protocol::TwoTask);
        }
        match s.strip_prefix("split").and_then(|n| n.parse::<usize>().ok()).filter(|&n| n > 0) {
            Some(n) => Ok(Protocol::Split(n)),
            None => Err(Error::Config(format!(
                "unknown protocol '{s}': valid protocols are two-task and splitN (N equal groups of classes, e.g. split5)"
            ))),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protocol::TwoTask => write!(f, "two-task"),
            Protocol::Split(n) => write!(f, "split{n}"),
        }
    }
}

impl Protocol {
    /// The protocol's tasks over classes `0..num_classes`.
    pub fn tasks(self, num_classes: usize) -> Result<Vec<Vec<u32>>> {
        let n = match self {
            Protocol::TwoTask => {
                if num_classes < 2 {
                    return Err(Error::Config(format!(
                        "two-task needs at least 2 classes, the data has {num_classes}"
                    )));
                }
                return Ok(vec![range(0, num_classes / 2), range(num_classes / 2, num_classes)]);
            }
            Protocol::Split(n) => n,
        };
        if !num_classes.is_multiple_of(n) || n > num_classes {
            let msg = format!("{self}: {num_classes} classes cannot be split into {n} equal tasks");
            return Err(Error::Config(msg));
        }
        let k = num_classes / n;
        Ok((0..n).map(|t| range(t * k, (t + 1) * k)).collect())
    }
}

/// The tasks of the protocol named `protocol` (see [`Protocol`]).
pub fn protocol_tasks(protocol: &str, num_classes: usize) -> Result<Vec<Vec<u32>>> {
    protocol.parse::<Protocol>()?.tasks(num_classes)
}

fn range(lo: usize, hi: usize) -> Vec<u32> {
    (lo as u32..hi as u32).collect()
}

/// The examples of a split that belong to one task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskView {
    /// The task's global classes, sorted.
    pub classes: Vec<u32>,
    /// Indices into the split of its examples, in dataset order.
    pub indices: Vec<usize>,
}

impl TaskView {
    /// Hold out `fraction` of each class's examples as a validation view,
    /// chosen by `rng` (stratified: every class keeps its share; a class
    /// keeps at least one training example). Both views keep dataset order.
    pub fn hold_out(&self, split: &Split, fraction: f64, rng: &mut Rng) -> (TaskView, TaskView) {
        let mut train = Vec::with_capacity(self.indices.len());
        let mut val = Vec::new();
        for &c in &self.classes {
            let mut of_class: Vec<usize> =
                self.indices.iter().copied().filter(|&i| split.labels[i] == c).collect();
            let n = of_class.len();
            let k = ((n as f64 * fraction).round() as usize).min(n.saturating_sub(1));
            rng.shuffle(&mut of_class);
            val.extend_from_slice(&of_class[..k]);
            train.extend_from_slice(&of_class[k..]);
        }
        train.sort_unstable();
        val.sort_unstable();
        let view = |indices| TaskView { classes: self.classes.clone(), indices };
        (view(train), view(val))
    }

    /// Keep only the first `n` examples (small, fast slices for tests and smoke runs).
    pub fn limit(mut self, n: usize) -> TaskView {
        self.indices.truncate(n);
        self
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// The examples of `split` whose label is in `classes`, in dataset order.
pub fn task_view(split: &Split, classes: &[u32]) -> TaskView {
    let size = classes.iter().max().map_or(0, |&m| m as usize + 1);
    let mut member = vec![false; size];
    for &c in classes {
        member[c as usize] = true;
    }
    let indices = split
        .labels
        .iter()
        .enumerate()
        .filter(|(_, &l)| member.get(l as usize) == Some(&true))
        .map(|(i, _)| i)
        .collect();
    let mut classes = classes.to_vec();
    classes.sort_unstable();
    classes.dedup();
    TaskView { classes, indices }
}

/// Fail with a clear message when a requested class has no example in
/// `split` (a typo in `--classes`, or the wrong data directory).
pub fn check_classes_present(split: &Split, classes: &[u32], path_hint: &str) -> Result<()> {
    let present = split.class_counts(classes.iter().max().map_or(0, |&m| m as usize + 1));
    let Some(&missing) = classes.iter().find(|&&c| present[c as usize] == 0) else { return Ok(()) };
    let mut have: Vec<u32> = split.labels.clone();
    have.sort_unstable();
    have.dedup();
    Err(Error::Config(format!(
        "class {missing} is not in {path_hint}: it has classes {}",
        format_classes(&have)
    )))
}

/// The position of global class `global` within the task `classes` — the
/// output index of that class in the task's head.
///
/// Panics if `global` is not one of `classes` (task views only hold their own classes).
pub fn local_label(classes: &[u32], global: u32) -> u32 {
    let pos = classes.iter().position(|&c| c == global);
    pos.unwrap_or_else(|| panic!("local_label: class {global} is not in task {classes:?}")) as u32
}

/// Map global labels to local ones in place (see [`local_label`]).
pub fn to_local(classes: &[u32], labels: &mut [u32]) {
    for l in labels {
        *l = local_label(classes, *l);
    }
}

/// One split holding the old tasks' images followed by the new task's, with
/// task views into it (`extend --method joint`, which trains on both).
pub fn joint_split(
    old: &Split,
    old_views: &[TaskView],
    new: &Split,
    classes: &[u32],
) -> (Split, TaskView, Vec<TaskView>) {
    let mut idx: Vec<usize> = Vec::new();
    let mut views = Vec::new();
    for v in old_views {
        let start = idx.len();
        idx.extend(&v.indices);
        views.push(TaskView { classes: v.classes.clone(), indices: (start..idx.len()).collect() });
    }
    let old_part = old.subset(&idx);
    let new_view = task_view(new, classes);
    let new_part = new.subset(&new_view.indices);
    let n_old = old_part.len();
    let split = old_part.concat(new_part);
    let new_view = TaskView { classes: classes.to_vec(), indices: (n_old..split.len()).collect() };
    (split, new_view, views)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Pixels;

    fn split(labels: Vec<u32>) -> Split {
        let n = labels.len();
        Split::new(Pixels::U8(vec![0; n]), labels, 1, 1, 1)
    }

    #[test]
    fn format_classes_inverts_parse() {
        for s in ["0-4", "5,7,9", "0-2,7", "3", "0,1,5-9"] {
            assert_eq!(format_classes(&parse_classes(s).unwrap()), s);
        }
        assert_eq!(format_classes(&[]), "");
    }

    #[test]
    fn task_view_keeps_dataset_order_and_limit_truncates() {
        let s = split(vec![3, 0, 5, 3, 9, 0]);
        let v = task_view(&s, &[3, 0]);
        assert_eq!(v, TaskView { classes: vec![0, 3], indices: vec![0, 1, 3, 5] });
        assert_eq!(v.limit(2).indices, [0, 1]);
        assert!(task_view(&s, &[]).is_empty());
    }

    #[test]
    fn classes_present_and_local_labels() {
        let s = split(vec![0, 1, 2, 3]);
        assert!(check_classes_present(&s, &[1, 3], "d").is_ok());
        let e = check_classes_present(&s, &[1, 11], "data/x").unwrap_err().to_string();
        assert_eq!(e, "class 11 is not in data/x: it has classes 0-3");
        assert_eq!(local_label(&[5, 6, 7], 7), 2);
        let mut l = [7, 5];
        to_local(&[5, 6, 7], &mut l);
        assert_eq!(l, [2, 0]);
    }

    #[test]
    fn class_lists_take_ids_ranges_and_names() {
        let names: Vec<String> = ["cat", "dog", "t-shirt", "horse"].map(String::from).to_vec();
        let resolve = |s: &str| s.parse::<ClassList>().and_then(|l| l.resolve(&names, "pets"));
        assert_eq!(resolve("0-1").unwrap(), [0, 1]);
        assert_eq!(resolve("horse, 0").unwrap(), [0, 3]);
        assert_eq!(resolve("t-shirt,dog,1").unwrap(), [1, 2], "a dash in a name is not a range");
        let e = resolve("cat,cow").unwrap_err().to_string();
        assert!(e.contains("'cow'") && e.contains("pets") && e.contains("cat, dog, t-shirt, horse"), "{e}");
        assert!(resolve("4-2").unwrap_err().to_string().contains("backwards"));
        assert!(resolve("0,,1").is_err() && resolve("").is_err());
    }
}
