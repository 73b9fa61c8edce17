() => {
  const field = () => document.querySelector('#box textarea, #box input');
  const picture = () => document.querySelector('#query img');
  // The image's own rectangle on the page: the <img> box, less object-fit: contain's bands.
  const placed = (img) => {
    const r = img.getBoundingClientRect();
    const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const w = img.naturalWidth * s, h = img.naturalHeight * s;
    return {x: r.left + (r.width - w) / 2, y: r.top + (r.height - h) / 2, w, h, s};
  };
  const frame = (img) => {
    let f = document.getElementById('box-frame');
    const host = img.parentElement;
    if (!f || f.parentElement !== host) {
      if (f) f.remove();
      f = document.createElement('div');
      f.id = 'box-frame';
      if (getComputedStyle(host).position === 'static') host.style.position = 'relative';
      host.style.overflow = 'hidden';
      host.appendChild(f);
    }
    return f;
  };
  const draw = (img, x0, y0, x1, y1) => {  // page coordinates
    const f = frame(img), h = img.parentElement.getBoundingClientRect();
    Object.assign(f.style, {display: 'block', left: (Math.min(x0, x1) - h.left) + 'px',
      top: (Math.min(y0, y1) - h.top) + 'px', width: Math.abs(x1 - x0) + 'px', height: Math.abs(y1 - y0) + 'px'});
  };
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const setField = (text) => {
    const el = field();
    if (!el || el.value === text) return;
    el.value = text;
    el.dispatchEvent(new Event('input', {bubbles: true}));
  };
  let drag = null;
  document.addEventListener('dragstart', (e) => { if (e.target === picture()) e.preventDefault(); }, true);
  document.addEventListener('pointerdown', (e) => {
    const img = picture();
    if (!img || e.target !== img || e.button !== 0 || !img.naturalWidth) return;
    e.preventDefault();
    const p = placed(img);
    const x = clamp(e.clientX, p.x, p.x + p.w), y = clamp(e.clientY, p.y, p.y + p.h);
    drag = {img, p, x0: x, y0: y, x1: x, y1: y};
  }, true);
  document.addEventListener('pointermove', (e) => {
    if (!drag) return;
    drag.x1 = clamp(e.clientX, drag.p.x, drag.p.x + drag.p.w);
    drag.y1 = clamp(e.clientY, drag.p.y, drag.p.y + drag.p.h);
    draw(drag.img, drag.x0, drag.y0, drag.x1, drag.y1);
  }, true);
  document.addEventListener('pointerup', () => {
    if (!drag) return;
    const {p, x0, y0, x1, y1} = drag;
    drag = null;
    if (Math.abs(x1 - x0) < 4 || Math.abs(y1 - y0) < 4) { setField(''); return; }
    const px = (v, o, n) => clamp(Math.round((v - o) / p.s), 0, n);
    const w = picture().naturalWidth, h = picture().naturalHeight;
    setField([px(Math.min(x0, x1), p.x, w), px(Math.min(y0, y1), p.y, h),
              px(Math.max(x0, x1), p.x, w), px(Math.max(y0, y1), p.y, h)].join(','));
  }, true);
  // Enter in K's number field commits it as leaving the field does: the slider's release, a new search.
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && e.target instanceof Element && e.target.matches('#k input[type=number]')) e.target.blur();
  }, true);
  // Redraw from the field: after typing, a link, a new image or a resize.
  setInterval(() => {
    if (drag) return;
    const img = picture(), f = document.getElementById('box-frame');
    const parts = ((field() || {}).value || '').split(/[ ,]+/).filter(Boolean).map(Number);
    if (!img || !img.naturalWidth || parts.length !== 4 || parts.some(isNaN)) {
      if (f) f.style.display = 'none';
      return;
    }
    const p = placed(img);
    const [a, b, c, d] = parts.map((v, i) => clamp(v, 0, i % 2 ? img.naturalHeight : img.naturalWidth));
    draw(img, p.x + a * p.s, p.y + b * p.s, p.x + c * p.s, p.y + d * p.s);
  }, 150);
}
