// Light and dark themes. The CSS follows prefers-color-scheme until the user picks one with the
// toggle; the pick is remembered in localStorage (it is not sensitive).

const KEY = 'switchboard.theme';
const media = matchMedia('(prefers-color-scheme: dark)');

function effective() {
  const forced = document.documentElement.dataset.theme;
  if (forced === 'light' || forced === 'dark') return forced;
  return media.matches ? 'dark' : 'light';
}

/** Wire the toggle button: its label always names the theme it switches to. */
export function initTheme(button) {
  const label = () => {
    const next = effective() === 'dark' ? 'light' : 'dark';
    button.setAttribute('aria-label', `Switch to ${next} theme`);
    button.title = `Switch to ${next} theme`;
    button.dataset.current = effective();
  };
  button.addEventListener('click', () => {
    const next = effective() === 'dark' ? 'light' : 'dark';
    document.documentElement.dataset.theme = next;
    try { localStorage.setItem(KEY, next); } catch { /* storage disabled */ }
    label();
  });
  media.addEventListener('change', label);
  label();
}
