// classpicker.js: a type-to-search class picker (the ARIA 1.2 combobox
// pattern: a text input owning a listbox of matches).
//
// It copes with 10 names as well as ImageNet's 1000 (at most MAX_SHOWN
// matches are listed). A query matches a class number exactly or any part
// of a name ("tench, Tinca tinca" carries aliases); matches at the start of
// a word come first. Text that matches no class is kept as typed, so the
// server's 400 can name the problem rather than the page guessing.

const MAX_SHOWN = 60;

export class ClassPicker {
  constructor(input, list, onChange = () => {}) {
    this.input = input;
    this.list = list;
    this.onChange = onChange;
    this.names = [];
    this.selected = -1;
    this.matches = [];
    this.active = -1;
    input.addEventListener('input', () => this.search(true));
    input.addEventListener('keydown', (e) => this.key(e));
    input.addEventListener('focus', () => input.select());
    input.addEventListener('blur', () => this.commit());
    input.addEventListener('click', () => (this.list.hidden ? this.search(false) : null));
    // mousedown, not click: the input keeps focus, so blur does not commit first
    list.addEventListener('mousedown', (e) => {
      const li = e.target.closest('[role=option]');
      if (!li) return;
      e.preventDefault();
      this.choose(Number(li.dataset.index));
    });
  }

  setClasses(names) {
    this.names = names.map((n, i) => (n == null ? `class ${i}` : String(n)));
    this.lower = this.names.map((n) => n.toLowerCase());
    this.input.disabled = false;
  }

  // The class to send: its number, the raw text when it matches no class,
  // or null when empty.
  get value() {
    if (this.selected >= 0) return this.selected;
    const t = this.input.value.trim();
    return t ? t : null;
  }

  label(i) {
    return i >= 0 && i < this.names.length ? this.names[i] : '';
  }

  set(i) {
    this.selected = i;
    this.input.value = this.label(i);
    this.close();
  }

  find(q) {
    q = q.trim().toLowerCase();
    if (!q) return this.names.map((_, i) => i).slice(0, MAX_SHOWN);
    const first = [], rest = [];
    if (/^\d+$/.test(q) && Number(q) < this.names.length) first.push(Number(q));
    this.lower.forEach((n, i) => {
      const at = n.indexOf(q);
      if (at < 0 || first.includes(i)) return;
      (at === 0 || /[\s,(/-]/.test(n[at - 1]) ? first : rest).push(i);
    });
    return first.concat(rest).slice(0, MAX_SHOWN);
  }

  search(typed) {
    if (typed) this.selected = -1;
    const q = typed ? this.input.value : '';
    this.matches = this.find(q);
    // typing an exact name selects it without the list
    if (typed) {
      const exact = this.lower.indexOf(q.trim().toLowerCase());
      if (exact >= 0) this.selected = exact;
    }
    this.active = this.matches.length ? Math.max(0, this.matches.indexOf(this.selected)) : -1;
    this.render();
  }

  render() {
    const items = this.matches.map((i, k) => {
      const li = document.createElement('li');
      li.id = `class-opt-${i}`;
      li.setAttribute('role', 'option');
      li.dataset.index = i;
      li.setAttribute('aria-selected', String(k === this.active));
      li.append(this.names[i]);
      const num = li.appendChild(document.createElement('span'));
      num.className = 'opt-num';
      num.textContent = i;
      return li;
    });
    if (!items.length) {
      const li = document.createElement('li');
      li.className = 'opt-none';
      li.textContent = 'No class matches';
      items.push(li);
    }
    this.list.replaceChildren(...items);
    this.list.hidden = false;
    this.input.setAttribute('aria-expanded', 'true');
    this.highlight();
  }

  highlight() {
    const opts = this.list.querySelectorAll('[role=option]');
    opts.forEach((li, k) => li.setAttribute('aria-selected', String(k === this.active)));
    const cur = opts[this.active];
    if (cur) {
      this.input.setAttribute('aria-activedescendant', cur.id);
      cur.scrollIntoView({ block: 'nearest' });
    } else {
      this.input.removeAttribute('aria-activedescendant');
    }
  }

  close() {
    this.list.hidden = true;
    this.input.setAttribute('aria-expanded', 'false');
    this.input.removeAttribute('aria-activedescendant');
  }

  choose(i) {
    this.set(i);
    this.onChange(i);
  }

  // On leaving the field: an exact name or number becomes the selection.
  commit() {
    this.close();
    if (this.selected >= 0) {
      this.input.value = this.label(this.selected);
      return;
    }
    const t = this.input.value.trim().toLowerCase();
    let i = this.lower.indexOf(t);
    if (i < 0 && /^\d+$/.test(t) && Number(t) < this.names.length) i = Number(t);
    if (i >= 0) this.choose(i);
  }

  key(e) {
    const open = !this.list.hidden;
    const n = this.matches.length;
    switch (e.key) {
    case 'ArrowDown':
    case 'ArrowUp':
      e.preventDefault();
      if (!open) {
        this.search(false);
        return;
      }
      if (n) this.active = (this.active + (e.key === 'ArrowDown' ? 1 : n - 1)) % n;
      this.highlight();
      return;
    case 'Enter': // picks the highlighted match; with the list closed, submits
      if (open && this.active >= 0) {
        e.preventDefault();
        this.choose(this.matches[this.active]);
      }
      return;
    case 'Escape':
      if (open) {
        e.preventDefault();
        e.stopPropagation();
        this.close();
      }
      return;
    default:
    }
  }
}
