//! The manifests-directory source: Kubernetes YAML files, re-read when they change.
//!
//! A file is re-parsed when its size or modification time changes. A file that no longer
//! parses at all keeps its last good objects (so a half-saved edit never withdraws routes);
//! a single bad object in a file is reported and skipped. Objects without a
//! `creationTimestamp` get the time this source first saw them, as an API server would
//! stamp them, so "the oldest wins" means what it says.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::path::Path;
use std::path::PathBuf;
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::objects;
use crate::objects::Object;
use crate::objects::Objects;

/// A problem reading the directory, by file.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
}

#[derive(Debug)]
struct FileState {
    stamp: (u64, Option<SystemTime>),
    objects: Vec<Object>,
}

/// A watched directory of manifests.
#[derive(Debug)]
pub struct ManifestDir {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    first_seen: HashMap<(&'static str, objects::Key), Timestamp>,
}

/// The result of one scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether any file was added, changed or removed since the last scan.
    pub changed: bool,
    /// Problems found in files that changed in this scan.
    pub errors: Vec<SourceError>,
}

impl ManifestDir {
    pub fn new(root: impl Into<PathBuf>) -> ManifestDir {
        ManifestDir {
            root: root.into(),
            files: BTreeMap::new(),
            first_seen: HashMap::new(),
        }
    }

    /// Re-reads files that changed. Cheap when nothing did: one `stat` per file.
    pub fn scan(&mut self) -> Scan {
        let mut scan = Scan::default();
        let mut paths = Vec::new();
        if let Err(e) = list(&self.root, &mut paths) {
            // An unreadable root keeps everything as it was.
            scan.errors.push(SourceError::Io {
                path: self.root.clone(),
                source: e,
            });
            return scan;
        }
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        scan.changed |= self.files.len() != before;
        for path in paths {
            let stamp = match std::fs::metadata(&path) {
                Ok(m) => (m.len(), m.modified().ok()),
                Err(source) => {
                    scan.errors.push(SourceError::Io { path, source });
                    continue;
                }
            };
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(source) => {
                    scan.errors.push(SourceError::Io { path, source });
                    continue;
                }
            };
            match objects::parse(&text) {
                Ok(parsed) => {
                    let mut objs = Vec::new();
                    for r in parsed {
                        match r {
                            Ok(o) => objs.push(o),
                            Err(e) => scan.errors.push(SourceError::Manifest {
                                path: path.clone(),
                                message: e.to_string(),
                            }),
                        }
                    }
                    scan.changed = true;
                    self.files.insert(path, FileState { stamp, objects: objs });
                }
                Err(e) => {
                    let kept = self.files.get(&path).map_or(0, |f| f.objects.len());
                    scan.errors.push(SourceError::Manifest {
                        path: path.clone(),
                        message: format!("{e}; keeping the {kept} objects it last held"),
                    });
                    // Remember the stamp so the same broken file is not reported every scan.
                    match self.files.get_mut(&path) {
                        Some(f) => f.stamp = stamp,
                        None => {
                            self.files.insert(
                                path,
                                FileState {
                                    stamp,
                                    objects: Vec::new(),
                                },
                            );
                        }
                    }
                }
            }
        }
        scan
    }

    /// All objects now held. When two files hold the same object, the first file (by path) wins.
    pub fn objects(&mut self) -> (Objects, Vec<SourceError>) {
        let mut all = Objects::default();
        let mut errors = Vec::new();
        // Nanosecond resolution keeps objects first seen in one scan apart only by name, as intended.
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let now = Timestamp::new(since_epoch.as_secs() as i64, since_epoch.subsec_nanos() as i32)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let mut seen = HashSet::new();
        for (path, f) in &self.files {
            for o in &f.objects {
                let mut o = o.clone();
                let id = (o.kind(), o.key());
                seen.insert(id.clone());
                if o.meta().creation_timestamp.is_none() {
                    let ts = *self.first_seen.entry(id).or_insert(now);
                    o.meta_mut().creation_timestamp = Some(Time(ts));
                }
                let (kind, key) = (o.kind(), o.key());
                if !all.insert(o) {
                    errors.push(SourceError::Manifest {
                        path: path.clone(),
                        message: format!("{kind} {key} is defined in an earlier file too; this copy is ignored"),
                    });
                }
            }
        }
        self.first_seen.retain(|k, _| seen.contains(k));
        (all, errors)
    }
}

/// Manifest files under `dir`, recursively, sorted; hidden entries (like a ConfigMap
/// volume's `..data`) are skipped.
fn list(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        // Follow symlinks, as ConfigMap volumes use them.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            list(&path, out)?;
        } else if [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext)) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {}\n";

    #[test]
    fn scans_pick_up_adds_changes_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = ManifestDir::new(dir.path());
        assert!(!m.scan().changed);
        std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        assert!(m.scan().changed);
        assert_eq!(m.objects().0.services.len(), 1);
        assert!(!m.scan().changed, "nothing changed");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.yml"), SVC.replace("name: a", "name: b")).unwrap();
        assert!(m.scan().changed);
        assert_eq!(m.objects().0.services.len(), 2);
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert!(m.scan().changed);
        assert_eq!(m.objects().0.services.len(), 1);
    }

    #[test]
    fn a_garbage_file_keeps_its_last_good_objects_and_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, SVC).unwrap();
        let mut m = ManifestDir::new(dir.path());
        m.scan();
        std::fs::write(&f, "kind: [garbage").unwrap();
        let s = m.scan();
        assert_eq!(s.errors.len(), 1);
        let msg = s.errors[0].to_string();
        assert!(msg.contains("a.yaml") && msg.contains("keeping the 1 objects"), "{msg}");
        assert_eq!(m.objects().0.services.len(), 1);
        assert!(m.scan().errors.is_empty(), "reported once, not every scan");
    }

    #[test]
    fn first_seen_time_stands_in_for_creation_timestamp_and_stays_put() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        let mut m = ManifestDir::new(dir.path());
        m.scan();
        let t1 = m
            .objects()
            .0
            .services
            .values()
            .next()
            .unwrap()
            .metadata
            .creation_timestamp
            .clone();
        let t2 = m
            .objects()
            .0
            .services
            .values()
            .next()
            .unwrap()
            .metadata
            .creation_timestamp
            .clone();
        assert!(t1.is_some());
        assert_eq!(t1, t2);
    }

    #[test]
    fn duplicates_across_files_keep_the_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), SVC).unwrap();
        std::fs::write(dir.path().join("2.yaml"), SVC).unwrap();
        let mut m = ManifestDir::new(dir.path());
        m.scan();
        let (objs, errs) = m.objects();
        assert_eq!(objs.services.len(), 1);
        assert!(errs[0].to_string().contains("2.yaml"));
    }
}
