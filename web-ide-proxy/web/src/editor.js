// The editor: one CodeMirror view, one EditorState per opened file (switching files keeps each
// file's unsaved edits, cursor and undo history). Saving is PUT api/file?path=...
import { basicSetup } from 'codemirror';
import { EditorView, keymap } from '@codemirror/view';
import { EditorState, Compartment } from '@codemirror/state';
import { indentWithTab } from '@codemirror/commands';
import { api } from './api.js';
import { languageFor, languageName } from './languages.js';

const editable = new Compartment();

const theme = EditorView.theme({
  '&': { height: '100%', fontSize: '14px' },
  '.cm-scroller': { fontFamily: 'var(--mono)', lineHeight: '1.5' },
  '.cm-gutters': { backgroundColor: '#f7f8fa', borderRight: '1px solid #e6e8eb', color: '#9aa1ab' },
  '.cm-activeLineGutter': { backgroundColor: '#eef1f5' },
  '&.cm-focused': { outline: 'none' },
});

export class Editor {
  /**
   * @param {object} els  {host, placeholder, save, status, current, dirtyMark}
   * @param {object} hooks {onDirtyChange(path, dirty), onSaved(path)}
   */
  constructor(els, hooks) {
    this.els = els;
    this.hooks = hooks;
    this.files = new Map(); // path -> {state, saved: Text, status: {text, kind}}
    this.current = null;
    this.view = null;
    this.readOnly = false;
    this.openSeq = 0;
  }

  get dirtyPaths() {
    return [...this.files.keys()].filter((p) => this.isDirty(p));
  }

  isDirty(path) {
    const f = this.files.get(path);
    if (!f) return false;
    const doc = path === this.current && this.view ? this.view.state.doc : f.state.doc;
    return !doc.eq(f.saved);
  }

  makeState(path, text, binary = false) {
    return EditorState.create({
      doc: text,
      extensions: [
        basicSetup,
        keymap.of([indentWithTab]),
        theme,
        languageFor(path),
        editable.of(EditorView.editable.of(!this.readOnly && !binary)),
        EditorState.readOnly.of(binary),
        EditorView.updateListener.of((u) => {
          if (u.docChanged) this.docChanged(path);
        }),
      ],
    });
  }

  ensureView() {
    if (this.view) return;
    this.view = new EditorView({ parent: this.els.host });
  }

  async open(path) {
    const seq = ++this.openSeq;
    if (this.current === path && this.view) {
      this.view.focus();
      return;
    }
    let file = this.files.get(path);
    if (!file) {
      this.showPlaceholder(`Opening ${path}\u2026`);
      let text;
      let binary;
      try {
        ({ text, binary } = await api.readFile(path));
      } catch (e) {
        if (seq !== this.openSeq) return;
        this.stash();
        this.current = null;
        this.showPlaceholder(openErrorText(path, e), true);
        this.refreshChrome();
        this.hooks.onActiveChange?.(path);
        return;
      }
      if (seq !== this.openSeq) return; // another file was clicked meanwhile
      file = this.files.get(path); // (opened concurrently?)
      if (!file) {
        const state = this.makeState(path, text, binary);
        file = { state, saved: state.doc, binary, status: { text: '', kind: '' } };
        if (binary) file.status = { text: 'Read-only: not UTF-8 text', kind: 'dirty' };
        this.files.set(path, file);
      }
    }
    this.stash();
    this.ensureView();
    this.current = path;
    this.view.setState(file.state);
    this.els.placeholder.hidden = true;
    this.view.dom.hidden = false;
    this.refreshChrome();
    this.hooks.onActiveChange?.(path);
    this.view.focus();
  }

  // Forget every open file (after a start over: what was open is no longer on disk).
  closeAll() {
    this.openSeq++;
    const paths = [...this.files.keys()];
    this.files.clear();
    this.current = null;
    if (this.view) this.view.dom.hidden = true;
    this.showPlaceholder('Choose a file on the left to edit it.');
    for (const p of paths) this.hooks.onDirtyChange?.(p, false);
    this.refreshChrome();
  }

  // Keep the current view state (edits, selection, history) in the file's record.
  stash() {
    if (this.current && this.view) {
      const f = this.files.get(this.current);
      if (f) f.state = this.view.state;
    }
  }

  showPlaceholder(text, isError = false) {
    this.els.placeholder.textContent = text;
    this.els.placeholder.classList.toggle('error', isError);
    this.els.placeholder.hidden = false;
    if (this.view) this.view.dom.hidden = true;
  }

  docChanged(path) {
    const f = this.files.get(path);
    if (!f) return;
    const dirty = this.isDirty(path);
    if (dirty) f.status = { text: 'Unsaved changes', kind: 'dirty' };
    else if (f.status.kind === 'dirty') f.status = { text: '', kind: '' };
    if (path === this.current) this.refreshChrome();
    this.hooks.onDirtyChange?.(path, dirty);
  }

  setStatus(path, text, kind) {
    const f = this.files.get(path);
    if (f) f.status = { text, kind };
    if (path === this.current) this.refreshChrome();
  }

  refreshChrome() {
    const { status, save, current, dirtyMark } = this.els;
    const path = this.current;
    const f = path ? this.files.get(path) : null;
    current.textContent = path || 'No file open';
    current.classList.toggle('muted', !path);
    current.title = path ? `${path} \u2014 ${languageName(path)}` : '';
    dirtyMark.hidden = !(path && this.isDirty(path));
    save.disabled = !path || this.readOnly;
    status.textContent = f ? f.status.text : '';
    status.title = status.textContent;
    status.className = f && f.status.kind ? f.status.kind : '';
  }

  async save(path = this.current) {
    if (!path || this.readOnly) return false;
    const f = this.files.get(path);
    if (!f) return false;
    if (f.binary) {
      this.setStatus(path, 'Not saved: this file is not UTF-8 text, it is shown read-only', 'error');
      return true; // nothing to save (and nothing that stops a check)
    }
    const doc = path === this.current && this.view ? this.view.state.doc : f.state.doc;
    this.setStatus(path, 'Saving\u2026', 'saving');
    try {
      await api.writeFile(path, doc.toString());
    } catch (e) {
      this.setStatus(path, `Save failed: ${e.message}`, 'error');
      return false;
    }
    f.saved = doc;
    const dirty = this.isDirty(path); // edits typed while saving stay unsaved
    this.setStatus(path, dirty ? 'Unsaved changes' : 'Saved', dirty ? 'dirty' : 'ok');
    this.hooks.onDirtyChange?.(path, dirty);
    this.hooks.onSaved?.(path);
    return true;
  }

  async saveAll() {
    const results = await Promise.all(this.dirtyPaths.map((p) => this.save(p)));
    return results.every(Boolean);
  }

  setReadOnly() {
    this.readOnly = true;
    if (this.view) this.view.dispatch({ effects: editable.reconfigure(EditorView.editable.of(false)) });
    this.refreshChrome();
  }
}

function openErrorText(path, e) {
  switch (e.status) {
    case 404:
      return `${path} does not exist any more.`;
    case 413:
      return `${path} is too large to open in the editor. ${e.message}`;
    case 400:
    case 415:
      return `${path} cannot be opened here: ${e.message}`;
    default:
      return `Could not open ${path}: ${e.message}`;
  }
}
