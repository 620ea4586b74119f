// The file tree, built from GET api/files entries ({path, kind, size}, paths relative to the
// workdir). Every item carries data-path="<relative path>"; clicking a file opens it, clicking a
// directory folds or unfolds it.

// Directories folded the first time they are seen (big or uninteresting for a learner).
const FOLDED_BY_DEFAULT = /^(\.|node_modules$|__pycache__$|target$|venv$|dist$|build$)/;

export class FileTree {
  constructor(root, { onOpen }) {
    this.root = root;
    this.onOpen = onOpen;
    this.expanded = new Set();
    this.seenDirs = new Set();
    this.active = null;
    this.dirty = new Set();
    this.paths = new Set();
    root.addEventListener('click', (e) => this.click(e));
    root.addEventListener('keydown', (e) => {
      if (e.key !== 'Enter' && e.key !== ' ') return;
      const node = e.target.closest('[data-path]');
      if (!node) return;
      e.preventDefault();
      this.activate(node);
    });
  }

  click(e) {
    const node = e.target.closest('[data-path]');
    if (node && this.root.contains(node)) this.activate(node);
  }

  activate(node) {
    const path = node.dataset.path;
    if (node.dataset.kind === 'dir') {
      if (this.expanded.has(path)) this.expanded.delete(path);
      else this.expanded.add(path);
      this.render();
    } else {
      this.onOpen(path);
    }
  }

  // Unfolds every directory above `path` (so its item can be seen and clicked).
  reveal(path) {
    const parts = path.split('/');
    let changed = false;
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!this.expanded.has(dir)) {
        this.expanded.add(dir);
        changed = true;
      }
    }
    if (changed) this.render();
  }

  setEntries(entries) {
    const root = { name: '', path: '', kind: 'dir', children: new Map() };
    const dirNode = (path) => {
      let node = root;
      if (!path) return node;
      let sofar = '';
      for (const part of path.split('/')) {
        sofar = sofar ? `${sofar}/${part}` : part;
        let child = node.children.get(part);
        if (!child) {
          child = { name: part, path: sofar, kind: 'dir', children: new Map() };
          node.children.set(part, child);
        }
        node = child;
      }
      return node;
    };
    this.paths = new Set();
    for (const entry of entries || []) {
      const path = String(entry.path || '').replace(/^\.?\/+/, '').replace(/\/+$/, '');
      if (!path) continue;
      this.paths.add(path);
      if (entry.kind === 'dir') {
        dirNode(path);
        continue;
      }
      const slash = path.lastIndexOf('/');
      const parent = dirNode(slash < 0 ? '' : path.slice(0, slash));
      const name = path.slice(slash + 1);
      parent.children.set(name, { name, path, kind: entry.kind || 'file', size: entry.size });
    }
    this.tree = root;
    this.render();
  }

  setActive(path) {
    this.active = path;
    for (const el of this.root.querySelectorAll('.node.active')) el.classList.remove('active');
    const el = this.find(path);
    if (el) el.classList.add('active');
  }

  setDirty(path, dirty) {
    if (dirty === this.dirty.has(path)) return;
    if (dirty) this.dirty.add(path);
    else this.dirty.delete(path);
    const el = this.find(path);
    if (el) el.classList.toggle('dirty', dirty);
  }

  find(path) {
    if (path == null) return null;
    return this.root.querySelector(`[data-path="${CSS.escape(path)}"]`);
  }

  render() {
    if (!this.tree) return;
    const focused = document.activeElement?.closest?.('#file-tree [data-path]')?.dataset.path;
    const frag = document.createDocumentFragment();
    this.renderChildren(this.tree, 0, frag);
    if (!this.tree.children.size) {
      const li = document.createElement('li');
      li.className = 'empty muted';
      li.textContent = 'The workspace is empty.';
      frag.append(li);
    }
    this.root.replaceChildren(frag);
    if (focused) this.find(focused)?.focus();
  }

  renderChildren(dir, depth, into) {
    const kids = [...dir.children.values()].sort((a, b) => {
      if ((a.kind === 'dir') !== (b.kind === 'dir')) return a.kind === 'dir' ? -1 : 1;
      return a.name.localeCompare(b.name, undefined, { numeric: true });
    });
    for (const node of kids) {
      const li = document.createElement('li');
      li.setAttribute('role', 'treeitem');
      const row = document.createElement('div');
      row.className = `node ${node.kind === 'dir' ? 'dir' : 'file'}`;
      row.dataset.path = node.path;
      row.dataset.kind = node.kind === 'dir' ? 'dir' : 'file';
      row.tabIndex = 0;
      row.style.setProperty('--depth', depth);
      row.title = node.kind === 'dir' ? node.path : `${node.path}${sizeText(node.size)}`;
      const icon = document.createElement('span');
      icon.className = 'icon';
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = node.name;
      row.append(icon, name);
      li.append(row);
      if (node.kind === 'dir') {
        if (!this.seenDirs.has(node.path)) {
          this.seenDirs.add(node.path);
          if (!FOLDED_BY_DEFAULT.test(node.name)) this.expanded.add(node.path);
        }
        const open = this.expanded.has(node.path);
        li.setAttribute('aria-expanded', String(open));
        row.setAttribute('aria-expanded', String(open));
        if (open) {
          const ul = document.createElement('ul');
          ul.setAttribute('role', 'group');
          this.renderChildren(node, depth + 1, ul);
          li.append(ul);
        }
      } else {
        row.classList.add(extClass(node.name));
        if (node.path === this.active) row.classList.add('active');
        if (this.dirty.has(node.path)) row.classList.add('dirty');
      }
      into.append(li);
    }
  }
}

function sizeText(size) {
  if (typeof size !== 'number') return '';
  if (size < 1024) return ` (${size} B)`;
  if (size < 1024 * 1024) return ` (${(size / 1024).toFixed(1)} KiB)`;
  return ` (${(size / 1024 / 1024).toFixed(1)} MiB)`;
}

function extClass(name) {
  if (/\.py$/i.test(name)) return 'ext-py';
  if (/\.(sh|bash)$/i.test(name) || /^(GNU)?[Mm]akefile$/.test(name)) return 'ext-sh';
  if (/\.(md|txt|rst)$/i.test(name)) return 'ext-doc';
  return 'ext-other';
}
