/* dit_export.h: the export macro of the public API.
 *
 * The library is compiled with hidden symbol visibility, so only functions
 * marked DIT_API are seen by programs that link it: internal names such as
 * zip_close or op_pool_new cannot clash with a user's own. The static
 * archive is one pre-linked object whose hidden symbols are made local
 * (engine/meson.build), so the same holds for static linking.
 */
#ifndef DIT_EXPORT_H
#define DIT_EXPORT_H

#if defined(_WIN32)
#define DIT_API
#elif defined(__GNUC__) || defined(__clang__)
#define DIT_API __attribute__((visibility("default")))
#else
#define DIT_API
#endif

#endif
