// Entry point of the WebAssembly module: the functions the host calls.
// Pointers are byte addresses in linear memory, sizes count f32 elements.

export { arenaBytes, arenaMaxBytes, arenaPtr, blockSizes, headDimMax, hbmPtr, smBytes, smPtr } from "./arena";
export { backwardArenaBytes, backwardBlockSize, backwardDkDv, backwardDqMerge, backwardPrep } from "./backward";
export { expInto } from "./exp";
export { forward } from "./forward";
export { resetCounters } from "./hbm";
export { mergeSplits } from "./merge";
