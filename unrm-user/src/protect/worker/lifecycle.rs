//! A tree's life: protected when asked (if its owner asks and its
//! filesystem is one unrm may hold), let go when unprotected or when its
//! filesystem leaves the mount table (`umount -l`), protected again when
//! that filesystem is back.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use super::{
    Live, MAX_TREES, MAX_TREES_PER_USER, Source, Tree, Worker, mount_facts, mount_ids, open_root, tree_path,
};
use crate::{
    notify::Group,
    protect::{
        Covered, TreeView,
        trees::{Asked, unsafe_filesystem},
        walk::mount_of,
    },
};

impl Worker {
    /// At start: the config file's trees, then those users asked for.
    pub(super) fn adopt_trees(&mut self) {
        self.sync_config_trees();
        for asked in self.asked.clone() {
            if let Err(err) = self.protect(&asked.path, asked.uid, asked.any_fs, Source::User) {
                log::warn!("protect: {err}");
                // Kept, and shown as refused: the user unprotects it.
                let id = self.next_id;
                self.next_id += 1;
                let tree = Tree::new(asked.path, asked.uid, Source::User, asked.any_fs, None);
                self.trees.insert(id, Tree { refused: Some(err), ..tree });
            }
        }
    }

    /// Protects the config file's trees that are new, lets go of those it
    /// no longer names.
    pub(super) fn sync_config_trees(&mut self) {
        let wanted = self.settings.trees.clone();
        let stale: Vec<u64> = self
            .trees
            .iter()
            .filter(|(_, t)| t.source == Source::Config && !wanted.contains(&t.path))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.let_go(id);
            self.trees.remove(&id);
        }
        for path in wanted {
            if let Err(err) = self.protect(&path, 0, false, Source::Config) {
                log::warn!("protect (config file): {err}");
            }
        }
    }

    /// Protects the tree at `path` for `uid`; its id.
    pub(super) fn protect(
        &mut self,
        path: &Path,
        uid: u32,
        any_fs: bool,
        source: Source,
    ) -> Result<u64, String> {
        let path = tree_path(path)?;
        if any_fs && uid != 0 {
            return Err("only root may protect a network, FUSE or removable filesystem (--any-fs)".into());
        }
        // What a user is told of a path before it is found to be theirs is
        // the same whatever the reason: root's walk must not tell them
        // what exists where they cannot look.
        let not_yours = || {
            format!(
                "{}: not a directory of yours: a user may protect only a directory of their own",
                path.display()
            )
        };
        let root = open_root(&path)
            .map_err(|err| if uid == 0 { format!("{}: {err}", path.display()) } else { not_yours() })?;
        let st = rustix::fs::fstat(&root).map_err(|err| format!("{}: {err}", path.display()))?;
        if uid != 0 && st.st_uid != uid {
            return Err(not_yours());
        }
        if let Some((id, tree)) = self.trees.iter().find(|(_, t)| t.path == path) {
            return if uid == 0 || tree.uid == uid {
                Ok(*id)
            } else {
                Err(format!("{}: protected already", path.display()))
            };
        }
        if let Some(tree) =
            self.trees.values().find(|t| path.starts_with(&t.path) || t.path.starts_with(&path))
        {
            let other =
                if uid == 0 || tree.uid == uid { tree.path.display().to_string() } else { "another".into() };
            return Err(format!("{} overlaps the protected tree {other}", path.display()));
        }
        let mine = self.trees.values().filter(|t| t.uid == uid).count();
        let users = self.trees.values().filter(|t| t.source == Source::User).count();
        // The config file's trees are not crowded out by users'.
        if (source == Source::User && users >= MAX_TREES) || (uid != 0 && mine >= MAX_TREES_PER_USER) {
            return Err(format!(
                "too many protected trees (at most {MAX_TREES}, {MAX_TREES_PER_USER} per user)"
            ));
        }
        let dev = st.st_dev;
        if let Some(why) = unsafe_filesystem(root.as_fd(), dev).filter(|_| !any_fs) {
            return Err(format!(
                "{}: {why}; unrm holds files there only when root asks with --any-fs (see README)",
                path.display()
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.trees.insert(id, Tree::new(path, uid, source, any_fs, Some(dev)));
        self.go_live(id, root);
        Ok(id)
    }

    /// Starts following tree `id` from its root, and walks it.
    fn go_live(&mut self, id: u64, root: std::os::fd::OwnedFd) {
        let tree = self.trees.get_mut(&id).expect("a known tree");
        let group = match Group::for_names() {
            Ok(group) => group,
            Err(err) => {
                tree.refused = Some(format!("fanotify: {err}"));
                return;
            }
        };
        let mnt_id = mount_of(root.as_fd()).unwrap_or(0);
        let (fstype, sb_dev) = mount_facts(mnt_id);
        tree.fstype = fstype;
        let sb_dev = sb_dev.or(tree.dev).unwrap_or(0);
        tree.refused = None;
        let covered = Covered { path: tree.path.clone(), uid: tree.uid, files: 0 };
        self.shared.lock().trees.insert(id, covered);
        tree.live = Some(Live { root, mnt_id, sb_dev, group });
        let started = std::time::Instant::now();
        self.walk(id, PathBuf::new(), true);
        let tree = &self.trees[&id];
        log::info!(
            "protecting {}: {} files in {} directories ({} excluded, {} not protected) in {:?}",
            tree.path.display(),
            self.shared.lock().trees.get(&id).map_or(0, |c| c.files),
            tree.counts.dirs,
            tree.counts.excluded,
            tree.counts.not_protected,
            started.elapsed()
        );
    }

    /// Lets go of every reference of tree `id`, and stops following it.
    pub(super) fn let_go(&mut self, id: u64) {
        self.shared.lock().drop_tree(id);
        if let Some(tree) = self.trees.get_mut(&id) {
            tree.live = None;
        }
    }

    pub(super) fn unprotect(&mut self, path: &Path, uid: u32) -> Result<TreeView, String> {
        let path = tree_path(path)?;
        let Some((&id, tree)) = self.trees.iter().find(|(_, t)| t.path == path) else {
            return Err(format!("{}: not a protected tree (see unrm protect --list)", path.display()));
        };
        if uid != 0 && tree.uid != uid {
            return Err(format!("{}: protected by another user", path.display()));
        }
        if tree.source == Source::Config {
            return Err(format!(
                "{}: protected by the config file's `protect`; remove it there and reload",
                path.display()
            ));
        }
        let mut view = self.view(id);
        self.let_go(id);
        self.trees.remove(&id);
        self.remember();
        view.state = "unprotected".into();
        view.files = 0;
        Ok(view)
    }

    /// The mount table changed: a tree whose mount left it is let go (so
    /// that a lazy unmount completes), one whose filesystem is back at its
    /// path is protected again.
    pub(super) fn mounts_changed(&mut self) {
        let present = mount_ids(&mut self.mountinfo);
        let gone: Vec<u64> = self
            .trees
            .iter()
            .filter(|(_, t)| t.live.as_ref().is_some_and(|l| !present.contains(&l.mnt_id)))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            log::warn!(
                "protect: {} left the mount table; its files are let go",
                self.trees[&id].path.display()
            );
            self.let_go(id);
        }
        let back: Vec<u64> = self
            .trees
            .iter()
            .filter(|(_, t)| t.live.is_none() && t.refused.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in back {
            let tree = &self.trees[&id];
            let Ok(root) = open_root(&tree.path) else { continue };
            let dev = rustix::fs::fstat(&root).map(|st| st.st_dev).ok();
            if dev.is_some() && dev == tree.dev {
                log::info!("protect: {} is back; protecting it again", tree.path.display());
                self.go_live(id, root);
            }
        }
    }

    /// Writes the trees users asked for to the registry.
    pub(super) fn remember(&mut self) {
        let asked: Vec<Asked> = self
            .trees
            .values()
            .filter(|t| t.source == Source::User)
            .map(|t| Asked { path: t.path.clone(), uid: t.uid, any_fs: t.any_fs })
            .collect();
        if asked != self.asked {
            match self.registry.save(&asked) {
                Ok(()) => self.asked = asked,
                // Tried again at the next change.
                Err(err) => log::error!("protect: remembering the protected trees: {err:#}"),
            }
        }
    }

    pub(super) fn view(&self, id: u64) -> TreeView {
        let tree = &self.trees[&id];
        let state = match (&tree.live, &tree.refused) {
            (Some(_), _) => "protected",
            (None, Some(_)) => "refused",
            (None, None) => "not mounted",
        };
        TreeView {
            path: tree.path.to_string_lossy().into_owned(),
            uid: tree.uid,
            source: if tree.source == Source::Config { "config" } else { "user" }.into(),
            state: state.into(),
            files: self.shared.lock().trees.get(&id).map_or(0, |c| c.files as u64),
            excluded: tree.counts.excluded,
            not_protected: tree.counts.not_protected,
            why: tree.refused.clone().or_else(|| tree.counts.why.clone()),
            fstype: tree.fstype.clone(),
        }
    }
}
