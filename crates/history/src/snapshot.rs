//! The initial snapshot of a sandbox copy, written without running git: the project is
//! copied file by file on a few threads, each file hashed while it is copied and
//! appended to that thread's packfile; then the trees, the commit, the refs and an index
//! with real stat data and a cache tree are written. The result is an ordinary git
//! repository (`git fsck` and `git status` are clean).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha1::{Digest, Sha1};

use crate::borrow::Borrowed;
use crate::error::{HistoryError, IoContext};
use crate::index::{self, Entry, Stat, TreeNode};
use crate::objects::{self, hash_object, hex, Oid};
use crate::pack::{PackWriter, OBJ_BLOB, OBJ_COMMIT, OBJ_TREE};
use crate::paths::{exclude_file_text, unstorable_name, Excludes};
use crate::statcache::{self, Record, StatCache};

/// Unsets every attribute that would make a blob differ from the file's bytes
/// (line-ending conversion, filters, ident): `info/attributes` beats `.gitattributes`.
const ATTRIBUTES: &str = "# Safe Coder: track bytes exactly as they are\n* -text -eol -filter -ident -working-tree-encoding\n";

/// Creates an empty repository in `git_dir` (refusing a non-empty one).
pub(crate) fn init_git_dir(
    git_dir: &Path,
    excludes: &[String],
    worktree: Option<&Path>,
) -> Result<(), HistoryError> {
    if git_dir.exists()
        && fs::read_dir(git_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(HistoryError::NotEmpty(git_dir.to_path_buf()));
    }
    for sub in [
        "objects/pack",
        "objects/info",
        "refs/heads",
        "refs/tags",
        "refs/safe-coder",
        "info",
    ] {
        let d = git_dir.join(sub);
        fs::create_dir_all(&d).ctx(|| format!("cannot create {}", d.display()))?;
    }
    let mut config = String::from(
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = false\n\
         \tsymlinks = true\n\tignorecase = false\n\tautocrlf = false\n\tsafecrlf = false\n\tfsmonitor = false\n\
         \tuntrackedCache = true\n\tquotePath = false\n\thooksPath = /dev/null\n",
    );
    if let Some(wt) = worktree {
        config.push_str(&format!("\tworktree = {}\n", wt.display()));
    }
    config.push_str(
        "[gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n[commit]\n\tgpgsign = false\n\
         [user]\n\tname = Safe Coder\n\temail = safe-coder@localhost\n",
    );
    let files = [
        ("HEAD", "ref: refs/heads/main\n".to_string()),
        ("config", config),
        ("description", "Safe Coder session history\n".to_string()),
        ("info/exclude", exclude_file_text(excludes)),
        ("info/attributes", ATTRIBUTES.to_string()),
    ];
    for (name, text) in files {
        let p = git_dir.join(name);
        fs::write(&p, text).ctx(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// Makes sure `info/attributes` pins byte-exact tracking (repositories made by older
/// versions, or an agent that deleted it).
pub(crate) fn ensure_attributes(git_dir: &Path) {
    let p = git_dir.join("info/attributes");
    if fs::read_to_string(&p)
        .map(|s| s != ATTRIBUTES)
        .unwrap_or(true)
    {
        let _ = fs::create_dir_all(git_dir.join("info"));
        let _ = fs::write(&p, ATTRIBUTES);
    }
}

struct Item {
    rel: PathBuf,
    size: u64,
    /// The project file's stat data when it was listed.
    stat: Stat,
    /// Its executable bit then.
    exec: bool,
    /// Git mode and blob id, when the user's index vouches for the file (borrowed:
    /// neither hashed nor stored, see `borrow.rs`).
    known: Option<(u32, Oid)>,
    /// `known` was already decided against the user's index (`direct`: beside the
    /// stat, without a search).
    checked: bool,
}

/// What the copy threads report per file.
struct Copied {
    id: Oid,
    mode: u32,
    stat: Stat,
}

/// Where the files of the initial snapshot come from.
pub(crate) enum Source<'a> {
    /// Walk the project (skipping `.git` and these globs) and copy it into the work tree.
    Copy {
        work_tree: &'a Path,
        excludes: &'a [String],
    },
    /// Snapshot in place (the shadow repository) the files `list` names (git's
    /// `ls-files -z` output: NUL-separated paths; empty ones and directories, ending
    /// in `/`, are skipped). It runs on a thread of its own, while the files the
    /// user's index names are stat'ed speculatively: only those `list` also names are
    /// kept, and only what it adds is stat'ed after it (see [`reconcile`]).
    InPlace {
        list: Box<dyn FnOnce() -> Result<Vec<u8>, HistoryError> + Send + 'a>,
        /// Whether to stat the index's files while `list` runs.
        speculate: bool,
    },
    /// Walk the project like `Copy` but copy nothing: it is an overlay workspace's
    /// lower layer. The paths the walk leaves out (`.git`, excluded, unstorable) are
    /// added to `hidden`, for the caller to hide from the merged tree.
    Layered {
        excludes: &'a [String],
        hidden: &'a std::sync::Mutex<Vec<PathBuf>>,
    },
}

/// What the first snapshot did, for the session's start line and the benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Regular files in the snapshot.
    pub files: usize,
    /// Of those, files whose blob was borrowed from the user's git (not read).
    pub borrowed: usize,
    /// Of those, files whose blob id came from the project's stat cache (a project
    /// without git whose earlier session hashed them; not read, see `statcache.rs`).
    pub cached: usize,
    /// Of those, files read and hashed.
    pub hashed: usize,
    /// Whether the copy shared blocks with the project (`FICLONE`).
    pub reflinked: bool,
}

/// Copies (or reads in place) the project and writes the initial commit; returns its
/// id. With `borrowed`, files the user's git index vouches for are not hashed and their
/// blobs are read from the user's object store (an alternate). Otherwise, with
/// `stat_cache` (the stat cache root in the data dir), files whose stat data match the
/// project's stat cache are not hashed either, and the cache is rewritten afterwards.
pub(crate) fn write_snapshot(
    project: &Path,
    source: Source<'_>,
    git_dir: &Path,
    message: &str,
    borrow: impl FnOnce() -> Option<Borrowed> + Send,
    stat_cache: Option<&Path>,
) -> Result<Written, HistoryError> {
    let (made, ()) =
        write_snapshot_beside(project, source, git_dir, message, borrow, stat_cache, || ())?;
    Ok(made)
}

/// [`write_snapshot`], running `after_walk` on its own thread as soon as the project
/// has been walked (for `Source::Layered`, once `hidden` is complete), beside the
/// hashing and the writing of trees, index and commit; returns its result too. The
/// overlay workspace mounts its layers there: the mount no longer waits for the
/// snapshot's writes, nor they for the mount.
pub(crate) fn write_snapshot_beside<T: Send>(
    project: &Path,
    source: Source<'_>,
    git_dir: &Path,
    message: &str,
    borrow: impl FnOnce() -> Option<Borrowed> + Send,
    stat_cache: Option<&Path>,
    after_walk: impl FnOnce() -> T + Send,
) -> Result<(Written, T), HistoryError> {
    if let Some(root) = stat_cache {
        statcache::prune_now_and_then(root);
    }
    let left = std::sync::Mutex::new(Vec::new());
    // The user's index (and the stat cache) are read while the project is walked.
    let (walked, borrowed, cached) = std::thread::scope(|s| {
        let cache_reader = stat_cache.map(|root| s.spawn(move || StatCache::read(root, project)));
        let (walked, borrowed) = match source {
            Source::InPlace { list, speculate } => {
                // git's listing is the longest step: it starts first. The user's index
                // is read here, then its files are stat'ed while git lists.
                let lister = s.spawn(list);
                let borrowed = borrow();
                let guessed = match &borrowed {
                    Some(b) if speculate => stat_index(project, b).map(Some),
                    _ => Ok(None),
                };
                let listed = lister
                    .join()
                    .unwrap_or_else(|_| Err(HistoryError::Corrupt("the lister panicked".into())));
                let walked = match (listed, guessed, &borrowed) {
                    (Ok(out), Ok(Some(probes)), Some(b)) => {
                        reconcile(project, &out, b, probes, &left)
                    }
                    (Ok(out), Ok(_), _) => classify(project, listed_paths(&out), &left),
                    (Err(e), _, _) | (_, Err(e), _) => Err(e),
                };
                (walked.map(|w| (None, w)), borrowed)
            }
            // The user's index is read while the project is walked.
            Source::Copy {
                work_tree,
                excludes,
            } => {
                let reader = s.spawn(borrow);
                let walked = Excludes::new(excludes)
                    .and_then(|ex| walk(project, &ex, &left, None))
                    .map(|w| (Some(work_tree), w));
                (walked, reader.join().ok().flatten())
            }
            Source::Layered { excludes, hidden } => {
                let reader = s.spawn(borrow);
                let walked = Excludes::new(excludes)
                    .and_then(|ex| walk(project, &ex, &left, Some(hidden)))
                    .map(|w| (None, w));
                (walked, reader.join().ok().flatten())
            }
        };
        let cached = cache_reader.and_then(|r| r.join().ok().flatten());
        (walked, borrowed, cached)
    });
    let (work_tree, (dirs, mut files, links)) = walked?;
    std::thread::scope(|s| {
        let beside = s.spawn(after_walk);
        let made = write_walked(
            project,
            work_tree,
            (dirs, &mut files, links),
            git_dir,
            message,
            (borrowed, cached),
            (stat_cache, left),
        );
        let beside = beside
            .join()
            .map_err(|_| HistoryError::Corrupt("a start thread panicked".into()));
        Ok((made?, beside?))
    })
}

/// Project paths the snapshot cannot take, with the reason.
type LeftOut = std::sync::Mutex<Vec<(PathBuf, &'static str)>>;

/// The rest of [`write_snapshot_beside`] once the project is walked.
#[allow(clippy::too_many_arguments)]
fn write_walked(
    project: &Path,
    work_tree: Option<&Path>,
    (dirs, files, links): (Vec<PathBuf>, &mut [Item], Vec<PathBuf>),
    git_dir: &Path,
    message: &str,
    (borrowed, cached): (Option<Borrowed>, Option<StatCache>),
    (stat_cache, left): (Option<&Path>, LeftOut),
) -> Result<Written, HistoryError> {
    let mut borrowed_count = 0;
    // A walk's files (the overlay's lower layer, the copy) come in no order and none
    // was matched yet: they are put in path order once, matched against the user's
    // index in one pass (no search per file), and the entries of those read in place
    // come out sorted (see `sort_entries`). `direct`'s files were matched beside
    // their stat; only its few others are searched.
    let by_path: Option<Vec<u32>> = match &borrowed {
        Some(_) if files.len() > 1 && files.iter().all(|f| !f.checked) => {
            let mut v: Vec<u32> = (0..files.len() as u32).collect();
            v.sort_unstable_by(|&x, &y| {
                let name = |i: u32| files[i as usize].rel.as_os_str().as_bytes();
                name(x).cmp(name(y))
            });
            Some(v)
        }
        _ => None,
    };
    if let Some(b) = &borrowed {
        if let Some(order) = &by_path {
            let (n, mut j) = (b.len(), 0);
            for &i in order {
                let f = &mut files[i as usize];
                let rel = f.rel.as_os_str().as_bytes();
                while j < n && b.name(j) < rel {
                    j += 1;
                }
                if j < n && b.name(j) == rel {
                    f.known = b.unchanged_at(j, &f.stat, f.exec);
                    j += 1;
                }
                f.checked = true;
                borrowed_count += usize::from(f.known.is_some());
            }
        } else {
            for f in files.iter_mut() {
                if !f.checked {
                    f.known = b.unchanged(f.rel.as_os_str().as_bytes(), &f.stat, f.exec);
                }
                borrowed_count += usize::from(f.known.is_some());
            }
        }
        if borrowed_count > 0 {
            b.write_alternates(git_dir)?;
        }
    }
    // A project without git: the stat cache of its previous session, if any.
    let cache_root = stat_cache.filter(|_| borrowed.is_none());
    let cache = cached
        .filter(|_| cache_root.is_some())
        .and_then(|c| c.link(git_dir));
    let mut cached_count = 0;
    if let Some(c) = &cache {
        for f in files.iter_mut() {
            f.known = c.unchanged(f.rel.as_os_str().as_bytes(), f.size, &f.stat, f.exec);
            cached_count += usize::from(f.known.is_some());
        }
    }
    note_left_out_at_start(git_dir, &left.into_inner().unwrap_or_default())?;
    let copy_to = |rel: &Path| work_tree.map(|w| w.join(rel));
    if let Some(w) = work_tree {
        for d in &dirs {
            let p = w.join(d);
            fs::create_dir_all(&p).ctx(|| format!("cannot create {}", p.display()))?;
        }
    }

    // Files of equal size may hold equal content; a pack must not hold an object twice,
    // so find those duplicates before packing (only same-size files are read twice).
    let mut by_size: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        if f.known.is_none() {
            by_size.entry(f.size).or_default().push(i);
        }
    }
    let mut expected: HashMap<usize, Oid> = HashMap::new();
    let mut packed: Vec<bool> = files.iter().map(|f| f.known.is_none()).collect();
    let mut first_seen: HashSet<Oid> = HashSet::new();
    let mut groups: Vec<&Vec<usize>> = by_size.values().filter(|g| g.len() > 1).collect();
    groups.sort_by_key(|g| g[0]);
    for group in groups {
        for &i in group {
            let p = project.join(&files[i].rel);
            let id = hash_file(&p, files[i].size)?;
            expected.insert(i, id);
            if !first_seen.insert(id) {
                packed[i] = false;
            }
        }
    }

    // A borrowed (or cached) file read in place needs nothing more: no thread, no
    // read. Only the rest are shared between threads.
    let inline = |f: &Item| f.known.is_some() && work_tree.is_none();
    let mut order: Vec<usize> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        if !inline(f) {
            order.push(i);
        }
    }
    // Balance the threads by bytes.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let threads = match order.len() {
        0 => 0,
        n if n < 64 => 1,
        _ => threads,
    };
    order.sort_by_key(|&i| std::cmp::Reverse(files[i].size));
    let mut shares: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); threads];
    for i in order {
        if let Some(lightest) = shares.iter_mut().min_by_key(|s| s.0) {
            lightest.0 += files[i].size + 4096;
            lightest.1.push(i);
        }
    }
    let pack_dir = git_dir.join("objects/pack");
    let reflink = AtomicBool::new(true);
    type Share = (Option<String>, Vec<(usize, Copied)>);
    let results: Vec<Result<Share, HistoryError>> = {
        let files: &[Item] = files;
        std::thread::scope(|s| {
            let handles: Vec<_> = shares
                .iter()
                .enumerate()
                .map(|(t, (_, share))| {
                    let (files, expected, packed, pack_dir, reflink, copy_to) =
                        (&files, &expected, &packed, &pack_dir, &reflink, &copy_to);
                    s.spawn(move || -> Result<Share, HistoryError> {
                        let count = share.iter().filter(|&&i| packed[i]).count() as u32;
                        let mut pack = PackWriter::create(pack_dir, &format!("blobs{t}"), count)?;
                        let mut buf = vec![0u8; 1 << 20];
                        let mut out = Vec::with_capacity(share.len());
                        for &i in share {
                            let rel = &files[i].rel;
                            if let Some((mode, id)) = files[i].known {
                                let copied = match copy_to(rel) {
                                    None => Copied {
                                        id,
                                        mode,
                                        stat: files[i].stat,
                                    },
                                    Some(dst) => copy_known(
                                        &project.join(rel),
                                        &dst,
                                        &files[i],
                                        (mode, id),
                                        &mut buf,
                                        reflink,
                                    )?,
                                };
                                out.push((i, copied));
                                continue;
                            }
                            let sink = if packed[i] { Some(&mut pack) } else { None };
                            let copied = copy_file(
                                &project.join(rel),
                                copy_to(rel).as_deref(),
                                files[i].size,
                                sink,
                                &mut buf,
                                reflink,
                                true,
                            )?;
                            if expected.get(&i).is_some_and(|e| *e != copied.id) {
                                return Err(HistoryError::ChangedDuringCopy {
                                    path: project.join(rel),
                                });
                            }
                            out.push((i, copied));
                        }
                        let name = pack.finish()?;
                        Ok((name, out))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(HistoryError::Corrupt("a copy thread panicked".into()))
                    })
                })
                .collect()
        })
    };

    let mut entries: Vec<Entry> = Vec::with_capacity(files.len() + links.len());
    // The blobs this snapshot's own packs hold (a borrowed one is in the user's store).
    let mut blob_ids: HashSet<Oid> = HashSet::new();
    let mut new_packs: Vec<String> = Vec::new();
    let mut records: Vec<(usize, u32, Oid)> = Vec::new();
    let mut add = |files: &mut [Item], i: usize, c: Copied| {
        if files[i].known.is_none() {
            blob_ids.insert(c.id);
        }
        if cache_root.is_some() {
            records.push((i, c.mode, c.id));
        }
        // The walk's path moves into the entry, unless the stat cache still
        // needs it below.
        let path = if cache_root.is_some() {
            files[i].rel.as_os_str().as_bytes().to_vec()
        } else {
            std::mem::take(&mut files[i].rel)
                .into_os_string()
                .into_vec()
        };
        entries.push(Entry {
            path,
            mode: c.mode,
            id: c.id,
            stat: c.stat,
        });
    };
    // The files read in place first, in path order (`direct`: theirs already).
    let mut in_place = 0;
    let in_order: Box<dyn Iterator<Item = usize>> = match &by_path {
        Some(order) => Box::new(order.iter().map(|&i| i as usize)),
        None => Box::new(0..files.len()),
    };
    for i in in_order {
        if let (Some((mode, id)), true) = (files[i].known, inline(&files[i])) {
            let stat = files[i].stat;
            add(files, i, Copied { id, mode, stat });
            in_place += 1;
        }
    }
    for r in results {
        let (name, done) = r?;
        new_packs.extend(name);
        for (i, c) in done {
            add(files, i, c);
        }
    }
    // Symlinks stay symlinks; their blob is the target path.
    let mut extra: Vec<(u8, Oid, Vec<u8>)> = Vec::new();
    let mut extra_ids: HashSet<Oid> = HashSet::new();
    for rel in &links {
        let src = project.join(rel);
        let dst = copy_to(rel).unwrap_or_else(|| src.clone());
        let target =
            fs::read_link(&src).ctx(|| format!("cannot read the link {}", src.display()))?;
        if work_tree.is_some() {
            std::os::unix::fs::symlink(&target, &dst)
                .ctx(|| format!("cannot create the link {}", dst.display()))?;
        }
        let meta = fs::symlink_metadata(&dst).ctx(|| format!("cannot stat {}", dst.display()))?;
        let body = target.as_os_str().as_bytes().to_vec();
        let id = hash_object("blob", &body);
        if !blob_ids.contains(&id) && extra_ids.insert(id) {
            extra.push((OBJ_BLOB, id, body));
        }
        entries.push(Entry {
            path: rel.as_os_str().as_bytes().to_vec(),
            mode: 0o120000,
            id,
            stat: Stat::from_meta(&meta),
        });
    }
    sort_entries(&mut entries, in_place);

    let mut nodes = Vec::new();
    let mut trees = Vec::new();
    let root = build_tree(&entries, 0, b"", &mut trees, &mut nodes);
    // The index is git's stat cache, not the snapshot (the commit and refs below are):
    // it is written on a thread of its own while the trees are packed and the session
    // goes on, and everything that lets git read it waits for it first
    // (`SessionRepo::git`). Lost in a crash, git re-reads the files once instead of
    // trusting their stat data.
    let index_path = git_dir.join("index");
    let write = move || index::write_index(&index_path, &entries, &nodes);
    let pending = PendingIndex::spawn(write)?;
    for (id, body) in trees {
        if extra_ids.insert(id) {
            extra.push((OBJ_TREE, id, body));
        }
    }
    let commit = objects::commit_body(&hex(&root), &[], message, objects::now());
    let commit_id = hash_object("commit", &commit);
    extra.push((OBJ_COMMIT, commit_id, commit));
    let mut pack = PackWriter::create(&pack_dir, "meta", extra.len() as u32)?;
    for (kind, id, body) in &extra {
        pack.begin_object(*kind, body.len() as u64)?;
        pack.feed(body)?;
        pack.end_object(*id)?;
    }
    pack.finish()?;

    let commit_hex = hex(&commit_id);
    write_ref(git_dir, "refs/heads/main", &commit_hex)?;
    write_ref(git_dir, "refs/safe-coder/base", &commit_hex)?;
    // Every file came from the cache: it already says all there is to say (entries of
    // deleted files stay until the next rewrite; they match nothing).
    let nothing_new = cache.is_some() && cached_count == files.len();
    if let Some(root) = cache_root.filter(|_| !nothing_new) {
        // The project's stat data as walked (not the copy's), with the blob hashed then
        // or reused: a file changed since the walk has other stat data (or is racy) and
        // is hashed again next time.
        let records: Vec<Record<'_>> = records
            .iter()
            .map(|&(i, mode, id)| Record {
                rel: files[i].rel.as_os_str().as_bytes(),
                size: files[i].size,
                stat: files[i].stat,
                mode,
                id,
            })
            .collect();
        let old = cache.as_ref().map(|c| c.packs()).unwrap_or_default();
        // Best effort: without a cache the next session hashes everything, as before.
        let _ = statcache::save(root, project, git_dir, old, &new_packs, &records);
    }
    let stats = SnapshotStats {
        files: files.len(),
        borrowed: borrowed_count,
        cached: cached_count,
        hashed: files.len() - borrowed_count - cached_count,
        reflinked: work_tree.is_some() && !files.is_empty() && reflink.load(Ordering::Relaxed),
    };
    Ok((commit_hex, stats, pending))
}

/// Sorts `entries` by path. When its first `head` entries already are in order
/// (`direct`: the files borrowed in place come in the user's index's order, and only
/// the few files read and the symlinks follow), only the rest is sorted and merged in
/// from the back, in one pass and without a buffer of the whole list.
fn sort_entries(entries: &mut Vec<Entry>, head: usize) {
    let sorted_head = head <= entries.len()
        && head >= entries.len() / 2
        && entries[..head].is_sorted_by(|a, b| a.path <= b.path);
    if !sorted_head {
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        return;
    }
    let mut tail = entries.split_off(head);
    tail.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    let mut i = head;
    entries.resize_with(head + tail.len(), || Entry {
        path: Vec::new(),
        mode: 0,
        id: [0; 20],
        stat: Stat::default(),
    });
    // `entries[i..w]` are the placeholders, one per entry of `tail` left.
    let mut w = entries.len();
    while let Some(t) = tail.pop() {
        while i > 0 && entries[i - 1].path > t.path {
            entries.swap(i - 1, w - 1);
            i -= 1;
            w -= 1;
        }
        entries[w - 1] = t;
        w -= 1;
    }
}

/// What a first snapshot wrote: the commit, what it did, and the index still being
/// written.
pub(crate) type Written = (String, SnapshotStats, PendingIndex);

/// The session index being written on its own thread (see `write_walked`); waited for
/// before git may read it, and when the last holder drops it.
#[derive(Debug, Default)]
pub(crate) struct PendingIndex(std::sync::Mutex<Option<std::thread::JoinHandle<()>>>);

impl PendingIndex {
    /// Runs `write` on a new thread (or here, when no thread can be made).
    fn spawn(
        write: impl FnOnce() -> Result<(), HistoryError> + Send + 'static,
    ) -> Result<PendingIndex, HistoryError> {
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(write)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || {
                let job = theirs.lock().ok().and_then(|mut w| w.take());
                // Best effort: without an index git reads the files once more.
                let _ = job.map(|w| w());
            });
        match spawned {
            Ok(h) => Ok(PendingIndex(std::sync::Mutex::new(Some(h)))),
            Err(_) => {
                let job = slot.lock().ok().and_then(|mut w| w.take());
                job.map_or(Ok(()), |w| w())?;
                Ok(PendingIndex::default())
            }
        }
    }

    /// Returns once the index is written (at once when it already is).
    pub(crate) fn wait(&self) {
        let handle = match self.0.lock() {
            Ok(mut h) => h.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for PendingIndex {
    fn drop(&mut self) {
        self.wait();
    }
}

/// Copies a file whose blob id the user's index gave: no hashing, no packing. The
/// source must still carry the stat data it was vouched for once copied, or it changed
/// meanwhile and the copy might not hold the vouched bytes.
fn copy_known(
    src: &Path,
    dst: &Path,
    item: &Item,
    (mode, id): (u32, Oid),
    buf: &mut [u8],
    reflink: &AtomicBool,
) -> Result<Copied, HistoryError> {
    let copied = copy_file(src, Some(dst), item.size, None, buf, reflink, false)?;
    let after = fs::symlink_metadata(src).ctx(|| format!("cannot stat {}", src.display()))?;
    let now = Stat::from_meta(&after);
    let same = now.mtime_s == item.stat.mtime_s
        && now.mtime_ns == item.stat.mtime_ns
        && now.ctime_s == item.stat.ctime_s
        && now.ctime_ns == item.stat.ctime_ns
        && now.size == item.stat.size;
    if !same {
        return Err(HistoryError::ChangedDuringCopy {
            path: src.to_path_buf(),
        });
    }
    Ok(Copied {
        id,
        mode,
        stat: copied.stat,
    })
}

/// The blob id of the file at `path`, read in a stream (however large it is).
fn hash_file(path: &Path, expected_len: u64) -> Result<Oid, HistoryError> {
    let mut input = File::open(path).ctx(|| format!("cannot read {}", path.display()))?;
    let mut sha = Sha1::new();
    sha.update(format!("blob {expected_len}\0").as_bytes());
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(HistoryError::io(
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        total += n as u64;
        sha.update(&buf[..n]);
    }
    if total != expected_len {
        return Err(HistoryError::ChangedDuringCopy {
            path: path.to_path_buf(),
        });
    }
    Ok(sha.finalize().into())
}

/// Writes a loose ref atomically.
pub(crate) fn write_ref(git_dir: &Path, name: &str, id: &str) -> Result<(), HistoryError> {
    let path = git_dir.join(name);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).ctx(|| format!("cannot create {}", dir.display()))?;
    }
    let lock = path.with_extension("lock");
    fs::write(&lock, format!("{id}\n")).ctx(|| format!("cannot write {}", lock.display()))?;
    fs::rename(&lock, &path).ctx(|| format!("cannot write {}", path.display()))
}

type Walked = (Vec<PathBuf>, Vec<Item>, Vec<PathBuf>);

/// Records the project paths the snapshot cannot take (see `paths::unstorable_name`)
/// for the change set to list.
fn note_left_out_at_start(
    git_dir: &Path,
    left: &[(PathBuf, &'static str)],
) -> Result<(), HistoryError> {
    if left.is_empty() {
        return Ok(());
    }
    let mut text = Vec::new();
    for (rel, why) in left {
        text.extend_from_slice(format!("{}\t{why}\0", rel.to_string_lossy()).as_bytes());
    }
    let p = git_dir.join(crate::repo::LEFT_OUT_AT_START_FILE);
    fs::write(&p, text).ctx(|| format!("cannot write {}", p.display()))
}

/// The first component of `rel` that git cannot hold, as a path, with the reason.
fn unstorable(rel: &Path) -> Option<(PathBuf, &'static str)> {
    let mut prefix = PathBuf::new();
    for part in rel.iter() {
        prefix.push(part);
        if let Some(why) = unstorable_name(part.as_bytes()) {
            return Some((prefix, why));
        }
    }
    None
}

/// Threads of the walk (and of the stat pass of `direct`). More than this 2-core
/// machine's cores on purpose, as git's own preload of the index (up to 20 threads):
/// a `stat` of a file not in the kernel's caches waits for the disk, and those waits
/// overlap; a cached `stat` costs the same on any thread.
const WALK_THREADS: usize = 4;

/// Directories, regular files and symlinks of `project` (relative paths), without
/// `.git` entries at any depth and without excluded ones (added to `hidden` when given).
/// Sockets, FIFOs and device files are skipped. `WALK_THREADS` share the directories;
/// each file costs one `fstatat` relative to its directory.
fn walk(
    project: &Path,
    ex: &Excludes,
    left: &std::sync::Mutex<Vec<(PathBuf, &'static str)>>,
    hidden: Option<&std::sync::Mutex<Vec<PathBuf>>>,
) -> Result<Walked, HistoryError> {
    use std::sync::{Condvar, Mutex, MutexGuard};
    struct Queue {
        dirs: Vec<PathBuf>,
        busy: usize,
        failed: Option<HistoryError>,
    }
    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        match m.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
    let queue = Mutex::new(Queue {
        dirs: vec![PathBuf::new()],
        busy: 0,
        failed: None,
    });
    let ready = Condvar::new();
    let hide = |rel: &Path| {
        if let Some(h) = hidden {
            lock(h).push(rel.to_path_buf());
        }
    };
    // One directory: its entries sorted into the three lists, subdirectories queued.
    // Read with `readdir` and `fstatat` on the open directory, not `fs::read_dir`:
    // one allocation per entry kept (its path), none per name read.
    let visit =
        |rel: &Path, out: &mut Walked, more: &mut Vec<PathBuf>| -> Result<(), HistoryError> {
            let dir = project.join(rel);
            let mut listing = DirListing::open(&dir)?;
            let fd = listing.fd();
            while let Some((cname, d_type)) = listing
                .next()
                .map_err(|e| HistoryError::io(format!("cannot read {}", dir.display()), e))?
            {
                let name = cname.to_bytes();
                // `rel.join(name)` in one allocation (`join` copies, then grows).
                let mut child = Vec::with_capacity(rel.as_os_str().len() + 1 + name.len());
                if !rel.as_os_str().is_empty() {
                    child.extend_from_slice(rel.as_os_str().as_bytes());
                    child.push(b'/');
                }
                child.extend_from_slice(name);
                let child = PathBuf::from(std::ffi::OsString::from_vec(child));
                if name == b".git" || ex.is_excluded(&child) {
                    hide(&child);
                    continue;
                }
                if let Some(why) = unstorable_name(name) {
                    lock(left).push((child.clone(), why));
                    hide(&child);
                    continue;
                }
                let kind = match d_type {
                    libc::DT_DIR => libc::S_IFDIR,
                    libc::DT_LNK => libc::S_IFLNK,
                    libc::DT_REG | libc::DT_UNKNOWN => 0,
                    _ => continue,
                };
                if kind == libc::S_IFDIR {
                    out.0.push(child.clone());
                    more.push(child);
                    continue;
                }
                if kind == libc::S_IFLNK {
                    out.2.push(child);
                    continue;
                }
                let st = stat_at(fd, cname).map_err(|e| {
                    HistoryError::io(format!("cannot stat {}", project.join(&child).display()), e)
                })?;
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFREG => out.1.push(Item {
                        rel: child,
                        size: st.st_size as u64,
                        stat: Stat::from_stat(&st),
                        exec: st.st_mode & 0o100 != 0,
                        known: None,
                        checked: false,
                    }),
                    // The type was unknown to `readdir` (some filesystems).
                    libc::S_IFDIR if d_type == libc::DT_UNKNOWN => {
                        out.0.push(child.clone());
                        more.push(child);
                    }
                    libc::S_IFLNK if d_type == libc::DT_UNKNOWN => out.2.push(child),
                    _ => {}
                }
            }
            Ok(())
        };
    let worker = || -> Walked {
        let mut out: Walked = (Vec::new(), Vec::new(), Vec::new());
        let mut q = lock(&queue);
        loop {
            if q.failed.is_some() {
                break;
            }
            let Some(rel) = q.dirs.pop() else {
                if q.busy == 0 {
                    break;
                }
                q = match ready.wait(q) {
                    Ok(q) => q,
                    Err(p) => p.into_inner(),
                };
                continue;
            };
            q.busy += 1;
            drop(q);
            let mut more = Vec::new();
            let done = visit(&rel, &mut out, &mut more);
            q = lock(&queue);
            q.busy -= 1;
            match done {
                Ok(()) => q.dirs.extend(more),
                Err(e) => {
                    q.failed.get_or_insert(e);
                }
            }
            ready.notify_all();
        }
        ready.notify_all();
        out
    };
    let parts: Vec<Walked> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..WALK_THREADS).map(|_| s.spawn(worker)).collect();
        let mut parts = vec![worker()];
        parts.extend(helpers.into_iter().map(|h| h.join().unwrap_or_default()));
        parts
    });
    if let Some(e) = lock(&queue).failed.take() {
        return Err(e);
    }
    let mut all: Walked = (Vec::new(), Vec::new(), Vec::new());
    for (d, f, l) in parts {
        all.0.extend(d);
        all.1.extend(f);
        all.2.extend(l);
    }
    Ok(all)
}

/// A directory being read by [`walk`]: `readdir` on a stream of its own, names
/// borrowed from the stream (no copy), files stat'ed relative to it.
struct DirListing(std::ptr::NonNull<libc::DIR>);

impl DirListing {
    fn open(dir: &Path) -> Result<DirListing, HistoryError> {
        let fail = |e| HistoryError::io(format!("cannot read {}", dir.display()), e);
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| fail(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        // SAFETY: `c` is a valid NUL-terminated path; a null result is handled.
        let d = unsafe { libc::opendir(c.as_ptr()) };
        std::ptr::NonNull::new(d)
            .map(DirListing)
            .ok_or_else(|| fail(std::io::Error::last_os_error()))
    }

    /// The next entry's name (neither `.` nor `..`) and `d_type`; `None` at the end.
    /// The name is valid until the next call: the caller copies what it keeps first.
    fn next(&mut self) -> std::io::Result<Option<(&std::ffi::CStr, u8)>> {
        loop {
            // SAFETY: errno is thread-local; `readdir` on our own stream, whose
            // entry stays valid until the next `readdir` or `closedir`.
            unsafe { *libc::__errno_location() = 0 };
            let ent = unsafe { libc::readdir64(self.0.as_ptr()) };
            if ent.is_null() {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(0) | None => Ok(None),
                    _ => Err(e),
                };
            }
            // SAFETY: `d_name` is NUL-terminated within the entry.
            let (name, d_type) = unsafe {
                (
                    std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()),
                    (*ent).d_type,
                )
            };
            if !matches!(name.to_bytes(), b"." | b"..") {
                return Ok(Some((name, d_type)));
            }
        }
    }

    /// The stream's descriptor, for [`stat_at`] (valid while the listing lives).
    fn fd(&self) -> std::os::fd::RawFd {
        // SAFETY: the stream is open.
        unsafe { libc::dirfd(self.0.as_ptr()) }
    }
}

/// `lstat` of `name` in the directory open as `dir`.
fn stat_at(dir: std::os::fd::RawFd, name: &std::ffi::CStr) -> std::io::Result<libc::stat> {
    // SAFETY: fstatat fills `st` on success; the descriptor and the name are valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for DirListing {
    fn drop(&mut self) {
        // SAFETY: the stream was opened by `open` and is closed once.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

/// The paths of git's `ls-files -z` output (empty ones and directories, which end in
/// `/`, skipped): nested repositories stay the user's own.
fn listed(out: &[u8]) -> impl Iterator<Item = &[u8]> {
    out.split(|&b| b == 0)
        .filter(|p| !p.is_empty() && !p.ends_with(b"/"))
}

/// [`listed`] as owned paths.
fn listed_paths(out: &[u8]) -> Vec<PathBuf> {
    listed(out)
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect()
}

/// What the stat of one file of the user's index found (`direct`, taken while git
/// lists; kept only if git lists the file, see [`reconcile`]).
enum Probe {
    /// Gone, or neither a regular file nor a symlink.
    Skip,
    /// A regular file, already matched against the user's index.
    File(Item),
    Link,
    /// Its path holds a name git cannot store: left out (and reported) if listed.
    Unstorable(PathBuf, &'static str),
}

/// The files of the user's index stat'ed (relative to their directories), on
/// `WALK_THREADS` threads each taking a run of consecutive files, and each regular
/// file matched against its index entry there (no search): one [`Probe`] per file
/// of `b`, in its order. One allocation, filled in place by the threads (at 50,000
/// files, every extra copy of these costs a thousand page faults).
fn stat_index(project: &Path, b: &Borrowed) -> Result<Vec<Probe>, HistoryError> {
    let n = b.len();
    let threads = if n < 2048 { 1 } else { WALK_THREADS };
    let per = n.div_ceil(threads).max(1);
    let mut probes: Vec<Probe> = Vec::with_capacity(n);
    probes.resize_with(n, || Probe::Skip);
    let run = |from: usize, out: &mut [Probe]| -> Result<(), HistoryError> {
        let mut cursor = DirCursor::new(project);
        for (slot, i) in out.iter_mut().zip(from..) {
            let rel = b.name(i);
            *slot = match cursor.stat(rel)? {
                Stated::Unstorable(bad, why) => Probe::Unstorable(bad, why),
                Stated::Gone => Probe::Skip,
                Stated::Found(st) => match st.st_mode & libc::S_IFMT {
                    libc::S_IFLNK => Probe::Link,
                    libc::S_IFREG => {
                        let stat = Stat::from_stat(&st);
                        let exec = st.st_mode & 0o100 != 0;
                        Probe::File(Item {
                            rel: PathBuf::from(std::ffi::OsStr::from_bytes(rel)),
                            size: st.st_size as u64,
                            known: b.unchanged_at(i, &stat, exec),
                            checked: true,
                            stat,
                            exec,
                        })
                    }
                    _ => Probe::Skip,
                },
            };
        }
        Ok(())
    };
    let mut chunks = probes.chunks_mut(per);
    let first = chunks.next();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .enumerate()
            .map(|(t, chunk)| s.spawn(move || run((t + 1) * per, chunk)))
            .collect();
        let mine = first.map_or(Ok(()), |chunk| run(0, chunk));
        for h in handles {
            h.join()
                .unwrap_or_else(|_| Err(HistoryError::Corrupt("a stat thread panicked".into())))?;
        }
        mine
    })?;
    Ok(probes)
}

/// The files of `out` (git's listing), classified: those of the user's index (`b`,
/// stat'ed while git listed: `probes`) as they were found then, the others (untracked
/// files, and symlinks, which the borrowed index leaves out) stat'ed now; the
/// index's files git did not list (ignored, deleted) are dropped. The same as
/// `classify(listed_paths(out))`, but most of the stats were taken beside git's walk.
/// Both lists are in git's byte order, so they are merged in one pass.
fn reconcile(
    project: &Path,
    out: &[u8],
    b: &Borrowed,
    mut probes: Vec<Probe>,
    left: &std::sync::Mutex<Vec<(PathBuf, &'static str)>>,
) -> Result<Walked, HistoryError> {
    let mut list: Vec<&[u8]> = listed(out).collect();
    // git sorts its listing (byte order, as its index): this is one pass over it.
    list.sort_unstable();
    list.dedup();
    let mut links = Vec::new();
    let mut rest = Vec::new();
    let n = b.len().min(probes.len());
    let mut i = 0;
    // What git did not list is dropped (`Skip`); the files stay where they are.
    let drop_until = |i: usize, to: usize, probes: &mut [Probe]| {
        for p in &mut probes[i..to] {
            *p = Probe::Skip;
        }
    };
    for p in list {
        let from = i;
        while i < n && b.name(i) < p {
            i += 1;
        }
        drop_until(from, i, &mut probes);
        if i < n && b.name(i) == p {
            match &probes[i] {
                Probe::File(_) | Probe::Skip => {}
                Probe::Link => links.push(PathBuf::from(std::ffi::OsStr::from_bytes(p))),
                Probe::Unstorable(bad, why) => note_unstorable(left, bad.clone(), why),
            }
            i += 1;
        } else {
            rest.push(PathBuf::from(std::ffi::OsStr::from_bytes(p)));
        }
    }
    drop_until(i, probes.len(), &mut probes);
    // In place: an `Item` fits where its `Probe` was.
    let mut files: Vec<Item> = probes
        .into_iter()
        .filter_map(|p| match p {
            Probe::File(item) => Some(item),
            _ => None,
        })
        .collect();
    let (_, more_files, more_links) = classify(project, rest, left)?;
    files.extend(more_files);
    links.extend(more_links);
    Ok((Vec::new(), files, links))
}

/// Adds a path the snapshot cannot take to `left` (once).
fn note_unstorable(
    left: &std::sync::Mutex<Vec<(PathBuf, &'static str)>>,
    bad: PathBuf,
    why: &'static str,
) {
    if let Ok(mut l) = left.lock() {
        if !l.iter().any(|(p, _)| *p == bad) {
            l.push((bad, why));
        }
    }
}

/// Sorts a list of project files (from `git ls-files`) into regular files and
/// symlinks; anything else (or gone meanwhile) is left out. Large lists are stat'ed
/// on a few threads.
fn classify(
    project: &Path,
    list: Vec<PathBuf>,
    left: &std::sync::Mutex<Vec<(PathBuf, &'static str)>>,
) -> Result<Walked, HistoryError> {
    let threads = WALK_THREADS;
    if list.len() < 2048 {
        return classify_part(project, list, left);
    }
    let per = list.len().div_ceil(threads);
    let mut list = list;
    let mut parts = Vec::with_capacity(threads);
    while list.len() > per {
        let rest = list.split_off(per);
        parts.push(std::mem::replace(&mut list, rest));
    }
    parts.push(list);
    let done: Vec<Result<Walked, HistoryError>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| s.spawn(move || classify_part(project, part, left)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(HistoryError::Corrupt("a stat thread panicked".into())))
            })
            .collect()
    });
    let mut all: Walked = (Vec::new(), Vec::new(), Vec::new());
    for part in done {
        let (_, f, l) = part?;
        all.1.extend(f);
        all.2.extend(l);
    }
    Ok(all)
}

fn classify_part(
    project: &Path,
    list: Vec<PathBuf>,
    left: &std::sync::Mutex<Vec<(PathBuf, &'static str)>>,
) -> Result<Walked, HistoryError> {
    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut cursor = DirCursor::new(project);
    for rel in list {
        let st = match cursor.stat(rel.as_os_str().as_bytes())? {
            Stated::Unstorable(bad, why) => {
                note_unstorable(left, bad, why);
                continue;
            }
            Stated::Gone => continue,
            Stated::Found(st) => st,
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => links.push(rel),
            libc::S_IFREG => files.push(Item {
                size: st.st_size as u64,
                stat: Stat::from_stat(&st),
                exec: st.st_mode & 0o100 != 0,
                known: None,
                checked: false,
                rel,
            }),
            _ => {}
        }
    }
    Ok((Vec::new(), files, links))
}

/// What [`DirCursor::stat`] found.
enum Stated {
    /// The path holds a name git cannot store: this prefix of it, and why.
    Unstorable(PathBuf, &'static str),
    /// Gone (or its directory is no longer one).
    Gone,
    Found(libc::stat),
}

/// `lstat` of project files given in path order: each file is stat'ed relative to
/// its directory, opened once for the files of it that follow one another (one path
/// lookup per directory, not one per component of every file), and the directory's
/// names are checked once for names git cannot store.
struct DirCursor<'a> {
    project: &'a Path,
    dir: Option<OpenDir>,
}

/// The directory of [`DirCursor`]'s last file.
struct OpenDir {
    /// Relative to the project, without a trailing `/`.
    rel: Vec<u8>,
    /// `None`: gone, or not a directory any more.
    fd: Option<File>,
    /// The first prefix of it whose name git cannot store, and why.
    unstorable: Option<(PathBuf, &'static str)>,
}

impl<'a> DirCursor<'a> {
    fn new(project: &'a Path) -> Self {
        DirCursor { project, dir: None }
    }

    fn stat(&mut self, rel: &[u8]) -> Result<Stated, HistoryError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(at) => (&rel[..at], &rel[at + 1..]),
            None => (&rel[..0], rel),
        };
        if name.is_empty() {
            return Ok(Stated::Gone);
        }
        if self.dir.as_ref().is_none_or(|d| d.rel != parent) {
            let unstorable_dir = unstorable(Path::new(std::ffi::OsStr::from_bytes(parent)));
            let path = self.project.join(std::ffi::OsStr::from_bytes(parent));
            let fd = if unstorable_dir.is_some() {
                None
            } else {
                let opened = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                    .open(&path);
                match opened {
                    Ok(f) => Some(f),
                    // Gone meanwhile (or no longer a directory): its files are too.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                        None
                    }
                    Err(e) => {
                        return Err(HistoryError::io(
                            format!("cannot open {}", path.display()),
                            e,
                        ))
                    }
                }
            };
            self.dir = Some(OpenDir {
                rel: parent.to_vec(),
                fd,
                unstorable: unstorable_dir,
            });
        }
        let Some(OpenDir { fd, unstorable, .. }) = &self.dir else {
            return Ok(Stated::Gone);
        };
        if let Some((bad, why)) = unstorable {
            return Ok(Stated::Unstorable(bad.clone(), why));
        }
        if let Some(why) = unstorable_name(name) {
            return Ok(Stated::Unstorable(
                PathBuf::from(std::ffi::OsStr::from_bytes(rel)),
                why,
            ));
        }
        let Some(fd) = fd else {
            return Ok(Stated::Gone);
        };
        let Ok(cname) = std::ffi::CString::new(name) else {
            return Ok(Stated::Gone);
        };
        // SAFETY: fstatat fills `st` on success; the descriptor and name are valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::fstatat(
                fd.as_raw_fd(),
                cname.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::NotFound {
                return Ok(Stated::Gone);
            }
            let p = self.project.join(std::ffi::OsStr::from_bytes(rel));
            return Err(HistoryError::io(format!("cannot stat {}", p.display()), e));
        }
        Ok(Stated::Found(st))
    }
}

/// Copies one regular file (or only reads it when `dst` is `None`), hashing it on the way and appending it to `pack`.
fn copy_file(
    src: &Path,
    dst: Option<&Path>,
    expected_len: u64,
    mut pack: Option<&mut PackWriter>,
    buf: &mut [u8],
    reflink: &AtomicBool,
    hash: bool,
) -> Result<Copied, HistoryError> {
    let mut input = File::open(src).ctx(|| format!("cannot read {}", src.display()))?;
    let meta = input
        .metadata()
        .ctx(|| format!("cannot stat {}", src.display()))?;
    let len = meta.len();
    if len != expected_len {
        return Err(HistoryError::ChangedDuringCopy {
            path: src.to_path_buf(),
        });
    }
    let perm = meta.permissions().mode() & 0o777;
    let mut out = match dst {
        Some(dst) => Some((
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(perm | 0o200)
                .open(dst)
                .ctx(|| format!("cannot create {}", dst.display()))?,
            dst,
        )),
        None => None,
    };
    let cloned = match &out {
        Some((file, _)) => reflink.load(Ordering::Relaxed) && try_reflink(&input, file, reflink),
        None => true,
    };
    let mut sha = Sha1::new();
    sha.update(format!("blob {len}\0").as_bytes());
    if let Some(p) = pack.as_deref_mut() {
        p.begin_object(OBJ_BLOB, len)?;
    }
    let mut total = 0u64;
    // A reflinked file whose id is known needs no read at all.
    let skip_read = !hash && cloned && pack.is_none();
    while !skip_read && total <= len {
        let n = match input.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(HistoryError::io(
                    format!("cannot read {}", src.display()),
                    e,
                ))
            }
        };
        total += n as u64;
        if total > len {
            return Err(HistoryError::ChangedDuringCopy {
                path: src.to_path_buf(),
            });
        }
        let chunk = &buf[..n];
        if let (false, Some((file, dst))) = (cloned, out.as_mut()) {
            file.write_all(chunk)
                .ctx(|| format!("cannot write {}", dst.display()))?;
        }
        if hash {
            sha.update(chunk);
        }
        if let Some(p) = pack.as_deref_mut() {
            p.feed(chunk)?;
        }
    }
    if !skip_read && total != len {
        return Err(HistoryError::ChangedDuringCopy {
            path: src.to_path_buf(),
        });
    }
    let id: Oid = sha.finalize().into();
    if let Some(p) = pack {
        p.end_object(id)?;
    }
    let Some((out, dst)) = out else {
        let mode = if perm & 0o100 != 0 {
            0o100755
        } else {
            0o100644
        };
        return Ok(Copied {
            id,
            mode,
            stat: Stat::from_meta(&meta),
        });
    };
    // Keep the modification time: builds see unchanged files, and git's index does not
    // find "racily clean" entries to re-hash.
    let mut times = FileTimes::new();
    if let Ok(m) = meta.modified() {
        times = times.set_modified(m);
    }
    if let Ok(a) = meta.accessed() {
        times = times.set_accessed(a);
    }
    let _ = out.set_times(times);
    let mut stat_meta = out
        .metadata()
        .ctx(|| format!("cannot stat {}", dst.display()))?;
    if stat_meta.permissions().mode() & 0o777 != perm {
        out.set_permissions(fs::Permissions::from_mode(perm))
            .ctx(|| format!("cannot chmod {}", dst.display()))?;
        stat_meta = out
            .metadata()
            .ctx(|| format!("cannot stat {}", dst.display()))?;
    }
    let mode = if stat_meta.permissions().mode() & 0o100 != 0 {
        0o100755
    } else {
        0o100644
    };
    Ok(Copied {
        id,
        mode,
        stat: Stat::from_meta(&stat_meta),
    })
}

/// Shares the blocks of `src` with `dst` (btrfs, XFS, bcachefs...). The first failure
/// turns reflinks off for the rest of the copy.
fn try_reflink(src: &File, dst: &File, enabled: &AtomicBool) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE only
    // reads its integer argument.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        true
    } else {
        enabled.store(false, Ordering::Relaxed);
        false
    }
}

/// Builds the tree for `entries` (all under one directory whose path prefix is
/// `prefix` bytes long), pushing every tree object and the cache-tree nodes in
/// pre-order. Returns the tree id.
fn build_tree(
    entries: &[Entry],
    prefix: usize,
    name: &[u8],
    trees: &mut Vec<(Oid, Vec<u8>)>,
    nodes: &mut Vec<TreeNode>,
) -> Oid {
    let pos = nodes.len();
    nodes.push(TreeNode {
        name: name.to_vec(),
        entry_count: entries.len(),
        subtree_count: 0,
        id: [0; 20],
    });
    let mut body = Vec::with_capacity(entries.len().min(256) * 40);
    let mut subtrees = 0;
    let mut i = 0;
    while i < entries.len() {
        let rest = &entries[i].path[prefix..];
        if let Some(slash) = rest.iter().position(|&b| b == b'/') {
            let dir = &rest[..slash];
            let mut j = i + 1;
            while j < entries.len() {
                let r = &entries[j].path[prefix..];
                if r.len() > slash && &r[..slash] == dir && r[slash] == b'/' {
                    j += 1;
                } else {
                    break;
                }
            }
            let id = build_tree(&entries[i..j], prefix + slash + 1, dir, trees, nodes);
            body.extend_from_slice(b"40000 ");
            body.extend_from_slice(dir);
            body.push(0);
            body.extend_from_slice(&id);
            subtrees += 1;
            i = j;
        } else {
            // No formatting (nor allocation) per entry for the three modes a tree holds.
            match entries[i].mode {
                0o100644 => body.extend_from_slice(b"100644 "),
                0o100755 => body.extend_from_slice(b"100755 "),
                0o120000 => body.extend_from_slice(b"120000 "),
                m => body.extend_from_slice(format!("{m:o} ").as_bytes()),
            }
            body.extend_from_slice(rest);
            body.push(0);
            body.extend_from_slice(&entries[i].id);
            i += 1;
        }
    }
    let id = hash_object("tree", &body);
    trees.push((id, body));
    nodes[pos].subtree_count = subtrees;
    nodes[pos].id = id;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            mode: 0o100644,
            id: [0; 20],
            stat: Stat::default(),
        }
    }

    fn paths(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect()
    }

    /// The merge of a sorted head with an unsorted tail gives what a full sort gives:
    /// tails that go first, last, in between and everywhere, and heads that are not
    /// sorted (or too short to count), which are sorted whole.
    #[test]
    fn sorted_head_and_tail_merge_like_a_sort() {
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..200 {
            let n = (next() % 60) as usize;
            let mut names: Vec<String> =
                (0..n).map(|i| format!("d{}/f{}", next() % 7, i)).collect();
            let head = if n == 0 {
                0
            } else {
                (next() as usize) % (n + 1)
            };
            if case % 3 != 0 {
                names[..head].sort();
            }
            let mut expected = names.clone();
            expected.sort();
            let mut entries: Vec<Entry> = names.iter().map(|p| entry(p)).collect();
            sort_entries(&mut entries, head);
            assert_eq!(paths(&entries), expected, "case {case}, head {head}");
        }
        let mut entries: Vec<Entry> = ["a", "b", "c", "z", "0", "bb"]
            .iter()
            .map(|p| entry(p))
            .collect();
        sort_entries(&mut entries, 4);
        assert_eq!(paths(&entries), ["0", "a", "b", "bb", "c", "z"]);
    }
}
