// Microphone capture: the context's rate down to the server's input rate, in frames.
//
// The browser captures at the audio context's rate (usually 48 kHz). Each block is
// low-pass filtered below the new Nyquist frequency (two cascaded biquads, so speech
// above 7 kHz does not fold back as noise), then read at fractional positions with
// linear interpolation. Finished frames of exactly `frameSize` 16-bit samples are
// posted to the main thread as transferable ArrayBuffers, which sends each one as it is.

class LowPass {
  // RBJ cookbook biquad; `cutoff` is a fraction of the sample rate.
  constructor(cutoff) {
    const w = 2 * Math.PI * cutoff;
    const alpha = Math.sin(w) / (2 * Math.SQRT1_2);
    const cos = Math.cos(w);
    const a0 = 1 + alpha;
    this.b0 = (1 - cos) / 2 / a0;
    this.b1 = (1 - cos) / a0;
    this.b2 = this.b0;
    this.a1 = (-2 * cos) / a0;
    this.a2 = (1 - alpha) / a0;
    this.x1 = this.x2 = this.y1 = this.y2 = 0;
  }

  run(samples) {
    for (let i = 0; i < samples.length; i++) {
      const x = samples[i];
      const y = this.b0 * x + this.b1 * this.x1 + this.b2 * this.x2 - this.a1 * this.y1 - this.a2 * this.y2;
      this.x2 = this.x1;
      this.x1 = x;
      this.y2 = this.y1;
      this.y1 = y;
      samples[i] = y;
    }
  }
}

class MicCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, frameSize } = options.processorOptions;
    this.step = sampleRate / targetRate; // input samples per output sample
    this.filters = this.step > 1 ? [0, 1].map(() => new LowPass((0.45 * targetRate) / sampleRate)) : [];
    this.position = 0; // where the next output sample lies, in this block's input samples
    this.previous = 0; // the last input sample of the previous block
    this.frameSize = frameSize;
    this.frame = new Int16Array(frameSize);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const block = Float32Array.from(channel);
    for (const filter of this.filters) filter.run(block);
    // Positions run from -1 (the previous block's last sample) to block.length - 1.
    while (this.position < block.length - 1) {
      const index = Math.floor(this.position);
      const fraction = this.position - index;
      const left = index < 0 ? this.previous : block[index];
      const right = block[index + 1];
      this.push(left + (right - left) * fraction);
      this.position += this.step;
    }
    this.position -= block.length;
    this.previous = block[block.length - 1];
    return true;
  }

  push(sample) {
    const clamped = Math.max(-1, Math.min(1, sample));
    this.frame[this.filled++] = Math.round(clamped * 32767);
    if (this.filled === this.frameSize) {
      // Transferred, not copied: the old array is empty afterwards, hence frameSize.
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
      this.frame = new Int16Array(this.frameSize);
      this.filled = 0;
    }
  }
}

registerProcessor("mic-capture", MicCapture);
