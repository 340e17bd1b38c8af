// The two CommonJS peers ship no type declarations; these describe only what the bench calls.

declare module "write-file-atomic" {
  type Data = string | Uint8Array;
  function writeFileAtomic(path: string, data: Data, options?: Record<string, unknown>): Promise<void>;
  namespace writeFileAtomic {
    function sync(path: string, data: Data, options?: Record<string, unknown>): void;
  }
  export default writeFileAtomic;
}

declare module "fast-write-atomic" {
  function writeAtomic(path: string, data: string | Uint8Array, callback: (error: Error | null) => void): void;
  namespace writeAtomic {
    function promise(path: string, data: string | Uint8Array): Promise<void>;
  }
  export default writeAtomic;
}
