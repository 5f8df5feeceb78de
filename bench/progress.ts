/**
 * The progress bar: one line on stderr, redrawn ten times a second, only when
 * stderr is a terminal (never in pipes, CI logs or tests).
 */
export class ProgressBar {
  readonly enabled: boolean;
  /** 0..1 within the current step; the step's runner updates it. */
  readonly current = { fraction: 0 };
  #step = 0;
  #label = '';
  #timer: NodeJS.Timeout | undefined;
  readonly #start = Date.now();

  constructor(
    readonly total: number,
    enabled: boolean,
    readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.enabled = enabled && stream.isTTY === true;
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
    this.#draw();
  }

  /** Prints a line above the bar. */
  log(line: string): void {
    if (this.enabled) this.stream.write('\r\x1b[2K');
    this.stream.write(`${line}\n`);
    this.#draw();
  }

  #draw(): void {
    if (!this.enabled) return;
    const width = 30;
    const done = Math.min(1, (Math.max(0, this.#step - 1) + Math.min(1, this.current.fraction)) / Math.max(1, this.total));
    const filled = Math.round(done * width);
    const secs = ((Date.now() - this.#start) / 1000).toFixed(0);
    const text = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${this.#step}/${this.total} ${secs}s ${this.#label}`;
    const columns = this.stream.columns ?? 100;
    this.stream.write(`\r\x1b[2K${text.slice(0, columns - 1)}`);
  }

  done(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    if (this.enabled) this.stream.write('\r\x1b[2K');
  }
}
