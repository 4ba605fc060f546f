// Agent playback: one queue of reply audio, played at the context's rate.
//
// Resampling: a phase accumulator walks the queued samples (at the server's output
// rate) `step` input samples per output sample and interpolates linearly between the
// two samples around it. Speech from a 22.05 kHz voice played at 44.1 or 48 kHz needs
// nothing better.
//
// Jitter buffer: after an underrun (or at the start) playback waits until `jitterMs` of
// audio is queued, or until the first queued sample has waited that long, so a short
// reply's tail is never held back for data that will not come.
//
// Cursor: `played` counts the samples of the current reply the worklet has actually
// rendered, in output-rate units. It is posted every ~50 ms while it moves, at once
// when a reply's samples run out or the next reply starts, and right after a clear.
// That is the server's only notion of what the listener heard.

class AgentPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { inputRate, jitterMs } = options.processorOptions;
    this.step = inputRate / sampleRate;
    this.jitterSamples = Math.round((jitterMs / 1000) * inputRate);
    this.jitterSeconds = jitterMs / 1000;
    this.smoothing = 1 - Math.exp(-1 / (0.005 * sampleRate)); // 5 ms gain changes
    this.queue = [];
    this.queued = 0;
    this.reset();
    this.reply = null;
    this.played = 0;
    this.reported = -1;
    this.reportedAt = 0;
    this.port.onmessage = (event) => this.command(event.data);
  }

  reset() {
    this.current = 0;
    this.next = 0;
    this.phase = 1; // take a new sample before the first output
    this.paused = false;
    this.gain = 1;
    this.targetGain = 1;
    this.priming = true;
    this.waitingSince = null;
  }

  command(message) {
    switch (message.type) {
      case "audio": {
        const samples = Float32Array.from(message.pcm, (s) => s / 32768);
        if (samples.length === 0) return;
        this.queue.push({ reply: message.reply, samples, offset: 0 });
        this.queued += samples.length;
        if (this.priming && this.waitingSince === null) this.waitingSince = currentTime;
        break;
      }
      case "pause":
        this.paused = true;
        break;
      case "resume":
        this.paused = false;
        this.targetGain = 1;
        break;
      case "duck":
        this.targetGain = message.gain;
        break;
      case "clear":
        this.queue = [];
        this.queued = 0;
        this.reset();
        this.report(true);
        break;
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    if (this.paused || !this.primed()) {
      out.fill(0);
    } else {
      this.render(out);
    }
    if (currentTime - this.reportedAt >= 0.05) this.report(false);
    return true;
  }

  primed() {
    if (!this.priming) return true;
    const waited = this.waitingSince !== null && currentTime - this.waitingSince >= this.jitterSeconds;
    if (this.queued >= this.jitterSamples || (this.queued > 0 && waited)) {
      this.priming = false;
      this.waitingSince = null;
    }
    return !this.priming;
  }

  render(out) {
    for (let i = 0; i < out.length; i++) {
      while (this.phase >= 1) {
        const sample = this.take();
        if (sample === null) {
          out.fill(0, i);
          this.priming = true;
          this.report(true); // the reply's last sample (so far) has been played
          return;
        }
        this.current = this.next;
        this.next = sample;
        this.phase -= 1;
      }
      this.gain += (this.targetGain - this.gain) * this.smoothing;
      out[i] = (this.current + (this.next - this.current) * this.phase) * this.gain;
      this.phase += this.step;
    }
  }

  take() {
    const head = this.queue[0];
    if (!head) return null;
    if (head.reply !== this.reply) {
      this.report(true); // the previous reply is over
      this.reply = head.reply;
      this.played = 0;
      this.reported = -1;
    }
    const sample = head.samples[head.offset++];
    if (head.offset === head.samples.length) this.queue.shift();
    this.queued -= 1;
    this.played += 1;
    return sample;
  }

  report(force) {
    if (this.reply === null || (!force && this.played === this.reported)) return;
    this.port.postMessage({ reply: this.reply, played: this.played });
    this.reported = this.played;
    this.reportedAt = currentTime;
  }
}

registerProcessor("agent-player", AgentPlayer);
