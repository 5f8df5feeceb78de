/**
 * Progress of a bench run on stderr. On a terminal: one line, redrawn ten
 * times a second, that only moves forward and shows an ETA. Anywhere else
 * (pipes, CI logs, tests): one plain line as each point starts, so a long run
 * is never silent. `--no-progress` turns both off.
 */
export class ProgressBar {
  /** True when drawing the bar on a terminal. */
  readonly enabled: boolean;
  /** True when printing a line per step instead (stderr is not a terminal). */
  readonly lines: boolean;
  /** 0..1 within the current step; the step's runner updates it. */
  readonly current = { fraction: 0 };
  #step = 0;
  #label = '';
  #timer: NodeJS.Timeout | undefined;
  readonly #start: number;
  /** The most of the run shown done so far: the bar never goes back. */
  #shown = 0;

  constructor(
    readonly total: number,
    enabled: boolean,
    readonly stream: NodeJS.WriteStream = process.stderr,
    readonly now: () => number = Date.now,
  ) {
    this.#start = now();
    this.enabled = enabled && stream.isTTY === true;
    this.lines = enabled && !this.enabled;
    if (this.enabled) {
      this.#timer = setInterval(() => this.#draw(), 100);
      this.#timer.unref();
    }
  }

  /** Starts step `label` (steps are counted from 1). */
  step(label: string): void {
    this.#step++;
    this.#label = label;
    this.current.fraction = 0;
    if (this.lines) {
      const eta = this.#eta();
      this.stream.write(`kvxfer bench: [${this.#step}/${this.total}] ${label} (${this.#elapsed()}s${eta === undefined ? '' : `, ETA ${eta}`})\n`);
    }
    this.#draw();
  }

  /** Prints a line above the bar. */
  log(line: string): void {
    if (this.enabled) this.stream.write('\r\x1b[2K');
    this.stream.write(`${line}\n`);
    this.#draw();
  }

  /** Stops drawing and clears the bar. */
  done(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.enabled) this.stream.write('\r\x1b[2K');
  }

  /** The share of the run done, 0..1; never less than what was shown before. */
  fraction(): number {
    const now = (Math.max(0, this.#step - 1) + Math.min(1, Math.max(0, this.current.fraction))) / Math.max(1, this.total);
    this.#shown = Math.min(1, Math.max(this.#shown, now));
    return this.#shown;
  }

  #elapsed(): string {
    return ((this.now() - this.#start) / 1000).toFixed(0);
  }

  /** Time left at the pace so far, once there is a pace to go by. */
  #eta(): string | undefined {
    const done = this.fraction();
    const spent = (this.now() - this.#start) / 1000;
    if (done <= 0 || spent < 1) return undefined;
    const left = Math.max(0, Math.round((spent / done) * (1 - done)));
    return left >= 60 ? `${Math.floor(left / 60)}m${String(left % 60).padStart(2, '0')}s` : `${left}s`;
  }

  #draw(): void {
    if (!this.enabled) return;
    const width = 30;
    const done = this.fraction();
    const filled = Math.round(done * width);
    const eta = this.#eta();
    const text =
      `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${this.#step}/${this.total} ${this.#elapsed()}s` +
      `${eta === undefined ? '' : ` ETA ${eta}`} ${this.#label}`;
    const columns = this.stream.columns ?? 100;
    this.stream.write(`\r\x1b[2K${text.slice(0, columns - 1)}`);
  }
}
